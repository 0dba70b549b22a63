//! The operator CLI: every command that talks to a running `onceq serve` over HTTP, through
//! [`onceq_client::Client`] (the same seam the embedded store implements).
//!
//! # Layout
//!
//! - This file: the options every such command shares ([`Connection`]: `--server`, `--token`,
//!   `--output`), the [`Session`] a command runs in (the client, the output format, the runtime),
//!   how a seam error becomes an exit code, and the `--yes` confirmation of destructive commands.
//! - [`queue`]: `onceq queue list|get|set|pause|resume|delete`.
//! - [`enqueue`]: `onceq enqueue`, one payload from the command line or JSON lines from stdin.
//! - [`lease`]: `onceq lease` and what ends a lease: `onceq ack|nack|extend|fail`.
//! - [`job`]: `onceq job get`.
//! - [`dlq`]: `onceq dlq list|redrive|purge`.
//! - [`group`]: `onceq group list|describe`, the consumer groups of a `per_key` queue.
//! - [`schedule`]: `onceq schedule put|get|list|delete|pause|resume`, cron schedules.
//! - [`stats`]: `onceq stats`, once or `--watch`ed.
//! - [`table`]: aligned columns and the short forms of values (ages, payloads) the tables show.
//!
//! `--output json` prints the API's JSON shapes (docs/api.md), one document per command, so a script
//! reads the same fields from the CLI as from the HTTP API.

pub mod dlq;
pub mod enqueue;
pub mod group;
pub mod job;
pub mod lease;
pub mod producer;
pub mod queue;
pub mod schedule;
pub mod stats;
pub mod table;

use std::future::Future;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use clap::{Args, ValueEnum};
use onceq_client::Client;
use onceq_core::Error;
use serde::Serialize;

use crate::error::CliError;

/// The server the CLI talks to when neither `--server` nor `ONCEQ_SERVER` says otherwise.
pub const SERVER_DEFAULT: &str = "http://127.0.0.1:7700";

/// How long one CLI call may take (a lease call gets its `--wait-ms` on top).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The exit codes of the operator commands, shown in their `--help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  the command failed: unknown queue or job, lease lost, refused by the server
  2  usage: bad arguments, flags or input
  3  the server is unreachable or unavailable (retrying later may succeed)";

/// The options every operator command takes. They are global to the command, so they may come
/// before or after a subcommand (`onceq queue --server URL list` or `onceq queue list --server URL`).
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// URL of the onceq server.
    #[arg(long, global = true, env = "ONCEQ_SERVER", default_value = SERVER_DEFAULT, value_name = "URL")]
    pub server: String,
    /// Bearer token, when the server has auth on.
    #[arg(long, global = true, env = "ONCEQ_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Output format: aligned columns for people, or the API's JSON (one document per command).
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// The operator commands, as `onceq --help` and the errors name them.
pub const OPERATOR_COMMANDS: &str =
    "queue, enqueue, lease, ack, nack, extend, fail, job, dlq, group, producer, schedule, stats";

/// The operator commands' connection options given before the command (`onceq --server URL
/// queue list`): the same as [`Connection`]'s, which they fill in when the command's own are not
/// given (see `Cli::try_parse_args`).
#[derive(Debug, Clone, Default, Args)]
pub struct LeadingConnection {
    /// URL of the onceq server, for the operator commands (also after the command; env ONCEQ_SERVER).
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token, for the operator commands (also after the command; env ONCEQ_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Output format of the operator commands (also after the command).
    #[arg(long, value_enum)]
    pub output: Option<Output>,
}

impl LeadingConnection {
    /// Whether none was given.
    pub fn is_empty(&self) -> bool {
        self.server.is_none() && self.token.is_none() && self.output.is_none()
    }
}

/// How a command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The API's JSON shapes, one document per command.
    Json,
}

/// What one operator command runs with: the client of the server and the output format.
#[derive(Debug)]
pub struct Session {
    /// The server's client.
    pub client: Client,
    /// The output format.
    pub output: Output,
    /// The server's URL as given, for messages.
    pub server: String,
}

impl Session {
    /// Makes the client for `connection`. A bad URL or token is a usage error; nothing is sent yet.
    pub fn new(connection: &Connection) -> Result<Self, CliError> {
        let client = Client::builder(connection.server.clone())
            .token(connection.token.clone().filter(|token| !token.is_empty()))
            .timeout(CALL_TIMEOUT)
            .build()
            .map_err(|e| match e {
                Error::InvalidRequest(message) => CliError::Usage(message),
                other => CliError::Usage(other.to_string()),
            })?;
        Ok(Session { client, output: connection.output, server: connection.server.clone() })
    }

    /// The exit code and message for a seam error from the server.
    pub fn failure(&self, error: Error) -> CliError {
        // The client's messages name its normalized URL; so do ours.
        failure(self.client.base_url(), error)
    }

    /// Prints `document` as JSON (pretty, one document) on stdout.
    pub fn print_json(&self, document: &impl Serialize) -> Result<(), CliError> {
        print_json(document)
    }
}

/// The exit code and message for a seam error from the server at `server`.
pub fn failure(server: &str, error: Error) -> CliError {
    let server = server.trim_end_matches('/');
    match error {
        Error::Unavailable(message) => {
            if message.contains(server) {
                CliError::Unavailable(message)
            } else {
                CliError::Unavailable(format!("the onceq server at {server} is unavailable: {message}"))
            }
        }
        Error::InvalidRequest(message) if message.starts_with("unauthorized") => CliError::Failed(format!(
            "the server at {server} refused the request ({message}); give a valid token with --token or ONCEQ_TOKEN"
        )),
        Error::InvalidRequest(message) if message.starts_with("forbidden") => {
            CliError::Failed(format!("the server at {server} refused the request ({message})"))
        }
        other => CliError::Failed(other.to_string()),
    }
}

/// Prints `document` as pretty JSON on stdout.
pub fn print_json(document: &impl Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(document)
        .map_err(|e| CliError::Failed(format!("cannot print the result as JSON: {e}")))?;
    outln!("{text}");
    Ok(())
}

/// Runs `command` in a fresh single-threaded runtime with the session for `connection`.
///
/// One thread is plenty for one operator command, and starts faster than a pool.
pub fn block_on<F, Fut>(connection: &Connection, command: F) -> Result<(), CliError>
where
    F: FnOnce(Session) -> Fut,
    Fut: Future<Output = Result<(), CliError>>,
{
    let session = Session::new(connection)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(command(session))
}

/// Asks before a destructive command, unless `--yes` was given.
///
/// At a terminal the question is asked on stderr and answered on stdin; without a terminal
/// (a script, a pipe) there is no one to ask, so the command refuses without `--yes`.
pub fn confirm(question: &str, yes: bool) -> Result<(), CliError> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Usage(format!("{question}: not confirmed; pass --yes to do it without a question")));
    }
    eprint!("{question}? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::Failed(format!("cannot read the answer: {e}")))?;
    if is_yes(&answer) {
        Ok(())
    } else {
        Err(CliError::Failed("not confirmed; nothing was changed".into()))
    }
}

/// Whether an answer to a question means yes.
fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Parses a `--header` value `NAME=VALUE`.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

/// Parses an RFC 3339 time argument.
pub fn parse_time(text: &str) -> Result<onceq_core::Timestamp, String> {
    onceq_core::api::parse_time(text).map_err(|e| match e {
        Error::InvalidRequest(message) => format!("{message}; e.g. 2026-01-01T12:00:00Z"),
        other => other.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use onceq_core::{JobId, QueueName};

    use super::*;

    const SERVER: &str = "http://127.0.0.1:7700";

    #[test]
    fn unavailable_is_exit_code_3_and_names_the_server() {
        let refused = "cannot connect to the onceq server at http://127.0.0.1:7700/ (refused); is `onceq serve` running and listening there?";
        let error = failure(SERVER, Error::Unavailable(refused.into()));
        assert_eq!(error.exit_code(), std::process::ExitCode::from(3));
        assert_eq!(error.to_string(), refused);
        let stopping = failure(SERVER, Error::Unavailable("shutting down (retry after 1 s)".into()));
        assert_eq!(
            stopping.to_string(),
            "the onceq server at http://127.0.0.1:7700 is unavailable: shutting down (retry after 1 s)"
        );
    }

    #[test]
    fn not_found_and_lease_lost_are_failures() {
        let queue = QueueName::new("emails").unwrap_or_else(|e| panic!("{e}"));
        let error = failure(SERVER, Error::QueueNotFound(queue));
        assert_eq!(error.exit_code(), std::process::ExitCode::from(1));
        assert_eq!(error.to_string(), "queue 'emails' not found");
        let lost = failure(SERVER, Error::LeaseLost(JobId::new(7)));
        assert!(matches!(&lost, CliError::Failed(m) if m.starts_with("lease lost on job 7")), "{lost}");
    }

    #[test]
    fn auth_refusals_say_how_to_give_a_token() {
        let error = failure(SERVER, Error::InvalidRequest("unauthorized: missing bearer token".into()));
        assert_eq!(
            error.to_string(),
            "the server at http://127.0.0.1:7700 refused the request (unauthorized: missing bearer token); \
             give a valid token with --token or ONCEQ_TOKEN"
        );
        assert_eq!(error.exit_code(), std::process::ExitCode::from(1));
    }

    #[test]
    fn a_bad_server_url_is_a_usage_error() {
        let connection = Connection { server: "127.0.0.1:7700".into(), token: None, output: Output::Table };
        let error = Session::new(&connection).err();
        assert!(matches!(&error, Some(CliError::Usage(m)) if m.contains("127.0.0.1:7700")), "{error:?}");
    }

    #[test]
    fn headers_are_name_equals_value() {
        assert_eq!(parse_header("trace=abc=1"), Ok(("trace".into(), "abc=1".into())));
        assert_eq!(parse_header("empty="), Ok(("empty".into(), String::new())));
        assert_eq!(parse_header("=v"), Err("\"=v\" is not NAME=VALUE".into()));
        assert_eq!(parse_header("novalue"), Err("\"novalue\" is not NAME=VALUE".into()));
    }

    #[test]
    fn answers_mean_yes_only_when_they_say_so() {
        assert!(is_yes("y\n"));
        assert!(is_yes(" YES "));
        assert!(!is_yes("\n"));
        assert!(!is_yes("no"));
        assert!(!is_yes("yep"));
    }

    #[test]
    fn times_are_rfc_3339() {
        assert_eq!(parse_time("2026-01-01T00:00:00Z").map(|t| t.as_millis()), Ok(1_767_225_600_000));
        let error = parse_time("tomorrow").err().unwrap_or_default();
        assert!(error.ends_with("e.g. 2026-01-01T12:00:00Z"), "{error}");
    }
}
