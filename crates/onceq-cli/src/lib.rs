//! onceq-cli: the `onceq` binary — the HTTP server, the operator CLI, `bench`, `relay`, `verify`
//! and `token`. It lives apart from the `onceq` library so that an application depending on the
//! library compiles none of it (no clap, no HTTP client, no PostgreSQL driver, no outbox sinks
//! it did not ask for).
//!
//! # Layout
//!
//! - This file: the command line ([`Cli`], [`Command`]) and [`run`], which carries a parsed command
//!   out. `main.rs` only parses and calls [`run`], so every command works without a process.
//! - [`mod@bench`]: `onceq bench`, the embedded store's figures beside the raw SQLite floor measured in
//!   the same run (docs/design.md, "Performance model"), or with `--server` the figures of a running
//!   server over HTTP.
//! - [`serve`]: `onceq serve`, the HTTP API (`onceq-server`) over the embedded store.
//! - [`token`]: `onceq token`, bearer tokens and their config entries.
//! - [`config`]: `onceq config check`, a config file resolved and checked as serve would.
//! - [`manual`]: `onceq completions` and `onceq man`, generated from the command line's definitions.
//! - [`relay`]: `onceq relay`, the transactional-outbox relay (`onceq-outbox`) to onceq, NATS
//!   JetStream, RabbitMQ or a webhook.
//! - [`verify`]: `onceq verify`, the delivery guarantees measured on a live target with injected
//!   faults (`onceq-verify`).
//! - [`cli`]: the operator commands (`onceq queue|enqueue|lease|ack|nack|extend|fail|job|dlq|group|stats`),
//!   which talk to a running server through `onceq-client`.
//! - `error`: [`CliError`] and its exit codes; `stdout`: standard output for the `out!` macros.
//! - `tests/`: the black-box tests of the binary (`http_*`, `pg_*`, `relay_*`, `cli`, `verify`,
//!   `bench_only`), each running the real `onceq` process.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use onceq_core::Error;

/// `print!` that survives a closed pipe. `onceq token new | head -1` closes standard output
/// early, and `print!` then panics (status 101). Here a closed pipe ends the process quietly with
/// status 0, as ripgrep and most Unix tools do; any other write error ends it with a message and
/// status 1. (`onceq serve` prints its one line without these: a server keeps running.)
macro_rules! out {
    ($($arg:tt)*) => { $crate::stdout::write_stdout(format_args!($($arg)*)) };
}

/// `println!` that survives a closed pipe: see `out!`.
macro_rules! outln {
    () => { $crate::stdout::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::stdout::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` for commands whose work must go on when nobody reads their output: `onceq bench`
/// still removes its temporary directories and schemas, and `onceq verify`'s exit status is its
/// verdict, not whether a pipe was open. A write error is ignored.
macro_rules! out_lossy {
    ($($arg:tt)*) => { let _ = $crate::stdout::try_write_stdout(format_args!($($arg)*)); };
}

/// `println!` that ignores a write error: see `out_lossy!`.
macro_rules! outln_lossy {
    () => { out_lossy!("\n") };
    ($($arg:tt)*) => { out_lossy!("{}\n", format_args!($($arg)*)) };
}

pub mod bench;
pub mod cli;
pub mod config;
pub mod data;
mod error;
pub mod manual;
pub mod relay;
pub mod serve;
mod stdout;
pub mod token;
pub mod verify;
pub mod verify_groups;

pub use error::CliError;

/// The end of `onceq --help`: where the operator commands find their server, and what they exit with.
const TOP_AFTER_HELP: &str = "\
The operator commands (queue, enqueue, lease, ack, nack, extend, fail, job, dlq, group, producer,
schedule, stats) talk to a running `onceq serve`: --server URL (env ONCEQ_SERVER, default http://127.0.0.1:7700), --token
(env ONCEQ_TOKEN), --output table|json, before or after the command. They exit with 0 on success, 1 when the command failed
(unknown queue or job, lease lost, refused), 2 on bad usage, 3 when the server is unreachable.";

/// The `onceq` command line.
#[derive(Debug, Parser)]
#[command(name = "onceq", version, about = "A durable job queue, honest about delivery guarantees", after_help = TOP_AFTER_HELP)]
pub struct Cli {
    /// Log format on stderr (level from RUST_LOG; by default onceq's own lines only, warn and
    /// up, info for serve).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ONCEQ_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// The operator commands' --server, --token and --output, given before the command.
    #[command(flatten)]
    pub leading: cli::LeadingConnection,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Parses a command line (program name first), or ends the process with clap's message
    /// and status 2 as `Parser::parse_from` does.
    pub fn parse_args(args: &[OsString]) -> Cli {
        Cli::try_parse_args(args).unwrap_or_else(|e| e.exit())
    }

    /// Parses a command line. The operator commands' `--server`, `--token` and `--output` may
    /// come before the command (`onceq --server URL queue list`) as well as after it; given in
    /// both places, the one after the command wins. Before any other command they are refused:
    /// `bench --server` and the rest have options of their own.
    pub fn try_parse_args(args: &[OsString]) -> Result<Cli, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        if cli.leading.is_empty() {
            return Ok(cli);
        }
        let given_after = |id: &str| {
            matches
                .subcommand()
                .and_then(|(_, sub)| sub.value_source(id))
                .is_some_and(|source| source == clap::parser::ValueSource::CommandLine)
        };
        let leading = std::mem::take(&mut cli.leading);
        let Some(connection) = cli.command.connection_mut() else {
            let name = matches.subcommand_name().unwrap_or_default();
            return Err(Cli::command().error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "--server, --token and --output before the command are for the operator commands ({}); \
                     `{name}` takes its own options after its name: onceq {name} --help",
                    cli::OPERATOR_COMMANDS
                ),
            ));
        };
        if let Some(server) = leading.server.filter(|_| !given_after("server")) {
            connection.server = server;
        }
        if let Some(token) = leading.token.filter(|_| !given_after("token")) {
            connection.token = Some(token);
        }
        if let Some(output) = leading.output.filter(|_| !given_after("output")) {
            connection.output = output;
        }
        Ok(cli)
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands of the `onceq` binary.
#[derive(Debug, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Run the HTTP API (see docs/api.md) over the embedded store, or over PostgreSQL with --store.
    Serve(serve::ServeArgs),
    /// Measure throughput on this machine, now: the embedded store beside raw SQLite, PostgreSQL
    /// (--store) beside pgbench, the outbox (--outbox), or a running server over HTTP (--server).
    Bench(bench::BenchArgs),
    /// Publish a transactional outbox (PostgreSQL or SQLite) to onceq, NATS, RabbitMQ or a webhook.
    Relay(relay::RelayArgs),
    /// Make and hash bearer tokens for the config file.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Check the data directory of a stopped embedded store: its version and SQLite's full
    /// integrity check. Exit 0 when sound, 1 with what is damaged.
    Doctor(data::DoctorArgs),
    /// Copy the embedded store to a new file while it serves (one consistent snapshot; the server
    /// is never paused). Run it on the server's machine.
    Backup(data::BackupArgs),
    /// Put a backup in place as the store of a stopped server's data directory.
    Restore(data::RestoreArgs),
    /// Check a config file without starting the server.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print the shell completion script for bash, zsh, fish, elvish or powershell.
    Completions(manual::CompletionsArgs),
    /// Print the man page, or write every command's page into a directory (--dir).
    Man(manual::ManArgs),
    /// Queues on a server: list, get, set (create or configure), pause, resume, delete.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Queue(cli::queue::QueueArgs),
    /// Enqueue a job (PAYLOAD argument), or many from JSON lines on stdin.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Enqueue(cli::enqueue::EnqueueArgs),
    /// Lease ready jobs from a queue and print them with their lease tokens.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Lease(cli::lease::LeaseArgs),
    /// Ack a leased job: it is done and gone for good.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Ack(cli::lease::AckArgs),
    /// Nack a leased job: retry it later (or dead-letter it when its attempts are exhausted).
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Nack(cli::lease::NackArgs),
    /// Extend a lease: keep the job for longer.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Extend(cli::lease::ExtendArgs),
    /// Fail a leased job: dead-letter it now.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Fail(cli::lease::FailArgs),
    /// Release a leased job: give the lease back without spending an attempt, ready again at
    /// once or after --delay-ms (a snooze).
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Release(cli::lease::ReleaseArgs),
    /// Jobs: get one by id.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Job(cli::job::JobArgs),
    /// Dead letters: list, redrive, purge.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Dlq(cli::dlq::DlqArgs),
    /// Consumer groups of a per_key queue: list, describe (members and partition owners).
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Group(cli::group::GroupArgs),
    /// Producers of commits: get (epoch and checkpoint), register (a new epoch, fencing the old).
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Producer(cli::producer::ProducerArgs),
    /// Cron schedules: put (create or replace), get, list, delete, pause, resume.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Schedule(cli::schedule::ScheduleArgs),
    /// Job counts of every queue: ready, scheduled, leased, dead, oldest ready age, paused.
    #[command(after_help = cli::EXIT_CODES_HELP)]
    Stats(cli::stats::StatsArgs),
    /// Measure the delivery guarantees on a live target with injected faults: lost jobs,
    /// duplicate deliveries and duplicate effects per delivery mode.
    Verify(verify::VerifyArgs),
    /// Run a rebalance drill: a consumer group of member processes works a stream of ordered
    /// jobs while members join, are killed and leave; report partitions moved, stalls, per-key
    /// order and overlapping work.
    VerifyGroups(verify_groups::VerifyGroupsArgs),
    /// One member process of `onceq verify-groups` (started by it).
    #[command(hide = true)]
    VerifyGroupsMember(verify_groups::member::MemberArgs),
}

impl Command {
    /// The server, token and output of an operator command; `None` for the other commands.
    fn connection_mut(&mut self) -> Option<&mut cli::Connection> {
        match self {
            Command::Queue(args) => Some(&mut args.connection),
            Command::Enqueue(args) => Some(&mut args.connection),
            Command::Lease(args) => Some(&mut args.connection),
            Command::Ack(args) => Some(&mut args.target.connection),
            Command::Nack(args) => Some(&mut args.target.connection),
            Command::Extend(args) => Some(&mut args.target.connection),
            Command::Fail(args) => Some(&mut args.target.connection),
            Command::Release(args) => Some(&mut args.target.connection),
            Command::Job(args) => Some(&mut args.connection),
            Command::Dlq(args) => Some(&mut args.connection),
            Command::Group(args) => Some(&mut args.connection),
            Command::Producer(args) => Some(&mut args.connection),
            Command::Schedule(args) => Some(&mut args.connection),
            Command::Stats(args) => Some(&mut args.connection),
            Command::Serve(_)
            | Command::Bench(_)
            | Command::Relay(_)
            | Command::Token(_)
            | Command::Doctor(_)
            | Command::Backup(_)
            | Command::Restore(_)
            | Command::Config(_)
            | Command::Completions(_)
            | Command::Man(_)
            | Command::Verify(_)
            | Command::VerifyGroups(_)
            | Command::VerifyGroupsMember(_) => None,
        }
    }
}

/// Carries out a parsed command line. `args` is the command line as typed (program name first):
/// commands that print a report echo it, so a figure can always be traced to what produced it.
pub fn run(cli: Cli, args: &[OsString]) -> ExitCode {
    let default_filter = match cli.command {
        Command::Serve(_) => default_filter("info", &[]),
        // The faults verify injects make its workers warn by design (a lost ack, a crash).
        Command::Verify(_) => default_filter("warn", &["onceq_worker=error", "onceq_postgres_worker=error"]),
        // A killed member's leases expire by design: the others' lost acks are expected.
        Command::VerifyGroupsMember(_) => default_filter("warn", &["onceq_worker=error"]),
        _ => default_filter("warn", &[]),
    };
    init_tracing(cli.log_format, &default_filter);
    let outcome = match cli.command {
        Command::Serve(serve_args) => serve::run(&serve_args),
        Command::Bench(bench_args) => bench::run(&bench_args, &command_line(args)).map_err(|e| match e {
            bench::BenchError::Options(_) => CliError::Usage(e.to_string()),
            bench::BenchError::Store(Error::Unavailable(message)) => CliError::Unavailable(message),
            other => CliError::Failed(other.to_string()),
        }),
        Command::Relay(relay_args) => relay::run(&relay_args),
        Command::Token(command) => token::run(&command),
        Command::Config(command) => config::run(&command),
        Command::Doctor(args) => data::doctor(&args),
        Command::Backup(args) => data::backup(&args),
        Command::Restore(args) => data::restore(&args),
        Command::Completions(args) => manual::completions(&args, <Cli as clap::CommandFactory>::command()),
        Command::Man(args) => manual::man(&args, <Cli as clap::CommandFactory>::command()),
        Command::Queue(args) => cli::queue::run(&args),
        Command::Enqueue(args) => cli::enqueue::run(&args),
        Command::Lease(args) => cli::lease::lease(&args),
        Command::Ack(args) => cli::lease::ack(&args),
        Command::Nack(args) => cli::lease::nack(&args),
        Command::Extend(args) => cli::lease::extend(&args),
        Command::Fail(args) => cli::lease::fail(&args),
        Command::Release(args) => cli::lease::release(&args),
        Command::Job(args) => cli::job::run(&args),
        Command::Dlq(args) => cli::dlq::run(&args),
        Command::Group(args) => cli::group::run(&args),
        Command::Producer(args) => cli::producer::run(&args),
        Command::Schedule(args) => cli::schedule::run(&args),
        Command::Stats(args) => cli::stats::run(&args),
        Command::Verify(verify_args) => verify::run(&verify_args, &command_line(args)),
        Command::VerifyGroups(drill_args) => verify_groups::run(&drill_args),
        Command::VerifyGroupsMember(member_args) => verify_groups::member::run(&member_args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("onceq: {error}");
            error.exit_code()
        }
    }
}

/// onceq's own crates: without `RUST_LOG` only these log, so that a library's own lines (an AMQP
/// client's errors on a failed login, a driver's notices) never come before onceq's message
/// about the same failure. `RUST_LOG` sets everything, libraries included.
const OWN_CRATES: &[&str] = &[
    "onceq",
    "onceq_cli",
    "onceq_client",
    "onceq_core",
    "onceq_layer",
    "onceq_outbox",
    "onceq_postgres",
    "onceq_postgres_worker",
    "onceq_redis",
    "onceq_server",
    "onceq_sqlite",
    "onceq_verify",
    "onceq_worker",
];

/// The log filter without `RUST_LOG`: onceq's crates at `level`, then `overrides`, and nothing
/// from any other crate.
fn default_filter(level: &str, overrides: &[&str]) -> String {
    let mut directives = vec!["off".to_owned()];
    directives.extend(OWN_CRATES.iter().map(|krate| format!("{krate}={level}")));
    directives.extend(overrides.iter().map(|o| (*o).to_owned()));
    directives.join(",")
}

/// Logs go to stderr, filtered by `RUST_LOG` (else `default_filter`), so that stdout carries
/// only a command's report.
fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second initialisation (a test calling `run` twice) is harmless: the first one stays.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The command line as a shell would accept it back: arguments with spaces or quotes are quoted.
pub fn command_line(args: &[OsString]) -> String {
    let mut words = Vec::with_capacity(args.len());
    for (i, arg) in args.iter().enumerate() {
        let arg = arg.to_string_lossy();
        // The program as typed may be a long target path; the command is what matters.
        let word = if i == 0 {
            std::path::Path::new(arg.as_ref())
                .file_name()
                .map_or_else(|| arg.to_string(), |name| name.to_string_lossy().into_owned())
        } else {
            arg.into_owned()
        };
        let plain = !word.is_empty()
            && word.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/' | '=' | ',' | ':'));
        if plain {
            words.push(word);
        } else {
            words.push(format!("'{}'", word.replace('\'', r"'\''")));
        }
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn command_line_quotes_only_what_needs_it() {
        let args: Vec<OsString> =
            ["/x/target/release/onceq", "bench", "--data-dir", "/tmp/my dir", "--jobs=5"].map(OsString::from).into();
        assert_eq!(command_line(&args), "onceq bench --data-dir '/tmp/my dir' --jobs=5");
    }

    #[test]
    fn the_cli_parses_bench_options() {
        let cli = Cli::try_parse_from(["onceq", "bench", "--quick", "--durability", "relaxed", "--jobs", "700"]);
        let Ok(Cli { command: Command::Bench(args), .. }) = cli else {
            panic!("bench did not parse: {cli:?}");
        };
        assert!(args.quick);
        assert_eq!(args.durability, bench::DurabilityChoice::Relaxed);
        assert_eq!(args.jobs, Some(700));
    }

    #[test]
    fn bench_over_http_takes_a_server_and_refuses_the_embedded_options() {
        let cli = Cli::try_parse_from(["onceq", "bench", "--server", "http://h:1", "--server-token", "t", "--quick"]);
        let Ok(Cli { command: Command::Bench(args), .. }) = cli else {
            panic!("bench --server did not parse: {cli:?}");
        };
        assert_eq!(
            (args.server.as_deref(), args.server_token.as_deref(), args.quick),
            (Some("http://h:1"), Some("t"), true)
        );
        for embedded_only in [["--durability", "fsync"], ["--backlog", "0"], ["--data-dir", "/tmp"]] {
            let cli =
                Cli::try_parse_from(["onceq", "bench", "--server", "http://h:1", embedded_only[0], embedded_only[1]]);
            assert_eq!(
                cli.map_err(|e| e.kind()).err(),
                Some(clap::error::ErrorKind::ArgumentConflict),
                "{embedded_only:?}"
            );
        }
    }

    /// The operator connection of `args` parsed as `main` parses them.
    fn leading(args: &[&str]) -> Result<cli::Connection, clap::error::ErrorKind> {
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let mut cli = Cli::try_parse_args(&args).map_err(|e| e.kind())?;
        Ok(cli.command.connection_mut().expect("an operator command").clone())
    }

    #[test]
    fn operator_flags_may_come_before_the_command() {
        let c =
            leading(&["onceq", "--server", "http://a:1", "--output", "json", "--token", "t", "queue", "list"]).unwrap();
        assert_eq!((c.server.as_str(), c.output, c.token.as_deref()), ("http://a:1", cli::Output::Json, Some("t")));
        // Given after the command too, the one after wins.
        let c = leading(&["onceq", "--server", "http://a:1", "queue", "list", "--server", "http://b:2"]).unwrap();
        assert_eq!(c.server, "http://b:2");
        let c = leading(&["onceq", "--server", "http://a:1", "queue", "--server", "http://b:2", "list"]).unwrap();
        assert_eq!(c.server, "http://b:2");
        // Settle commands carry theirs in the lease target.
        let token = "0123456789abcdef0123456789abcdef";
        let c = leading(&["onceq", "--token", "t", "ack", "5", "--lease-token", token]).unwrap();
        assert_eq!(c.token.as_deref(), Some("t"));
        // Not given before: as after, or the defaults.
        let c = leading(&["onceq", "stats", "--output", "json"]).unwrap();
        assert_eq!(c.output, cli::Output::Json);
    }

    #[test]
    fn operator_flags_before_another_command_are_refused() {
        for args in [
            &["onceq", "--server", "http://a:1", "bench", "--quick"][..],
            &["onceq", "--token", "t", "serve"][..],
            &["onceq", "--output", "json", "token", "new"][..],
        ] {
            let args: Vec<OsString> = args.iter().map(OsString::from).collect();
            let error = Cli::try_parse_args(&args).expect_err("refused");
            assert_eq!(error.kind(), clap::error::ErrorKind::ArgumentConflict, "{error}");
            assert!(error.to_string().contains("are for the operator commands"), "{error}");
        }
    }

    #[test]
    fn by_default_only_onceq_logs() {
        let filter = default_filter("warn", &["onceq_worker=error"]);
        assert!(filter.starts_with("off,onceq=warn,"), "{filter}");
        assert!(filter.contains(",onceq_outbox=warn,") && filter.ends_with(",onceq_worker=error"), "{filter}");
        // Every crate of the workspace is named (a new one must be added).
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for entry in std::fs::read_dir(root).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().replace('-', "_");
            if name.starts_with("onceq") && name != "onceq_testkit" {
                assert!(OWN_CRATES.contains(&name.as_str()), "{name} is not in OWN_CRATES");
            }
        }
        assert!(tracing_subscriber::EnvFilter::try_new(&filter).is_ok(), "{filter}");
    }

    #[test]
    fn the_cli_rejects_an_unknown_durability() {
        let cli = Cli::try_parse_from(["onceq", "bench", "--durability", "sometimes"]);
        assert_eq!(cli.map_err(|e| e.kind()).err(), Some(clap::error::ErrorKind::InvalidValue));
    }
}
