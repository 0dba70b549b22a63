//! `onceq enqueue QUEUE [PAYLOAD]`: one job from the command line, or many from JSON lines on stdin.
//!
//! Each stdin line is one job: any JSON value is the payload, except an object with a
//! `"payload"` key, which is a job as the API's enqueue takes it (`payload`, `delay_ms`, `run_at`,
//! `priority`, `max_attempts`, `dedup_id`, `headers`, `ordering_key`, `unique`). (To enqueue an object that has a
//! `"payload"` key as the payload itself, wrap it: `{"payload": {"payload": ...}}`.) The flags
//! are the defaults of every line; a line's own fields win. Lines go out in batches of up to
//! [`ENQUEUE_BATCH_MAX`] jobs; each batch is atomic, so after a failure every job before the
//! failed batch is enqueued and none after it, and the message says where that is.

use std::io::IsTerminal;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use onceq_core::api::{EnqueueJob, EnqueueResponse, UniqueSpec};
use onceq_core::limits::{
    ATTEMPTS_MAX, DELAY_MS_MAX, ENQUEUE_BATCH_MAX, ORDERING_KEY_LEN_MAX, PRIORITY_MAX, PRIORITY_MIN,
};
use onceq_core::{Enqueued, Error, NewJob, QueueName, Schedule, Store, Timestamp, Unique};
use serde::de::IgnoredAny;
use tokio::io::AsyncBufReadExt;

use super::table::{Align, Table};
use super::{block_on, parse_header, parse_time, Connection, Output, Session};
use crate::error::CliError;

/// A batch is sent before its jobs pass this many bytes on the wire, well inside the server's
/// 16 MiB body limit even for jobs near the 1 MiB payload limit or with many large headers.
const BATCH_BYTES_MAX: usize = 8 * 1024 * 1024;

/// About how many bytes `job` takes in an enqueue request body (an upper bound for JSON
/// payloads, which travel as they are: quotes, colons and field names included).
fn wire_bytes(job: &NewJob) -> usize {
    const FIELDS_BYTES: usize = 160;
    let headers: usize = job.headers.iter().map(|(name, value)| name.len() + value.len() + 6).sum();
    let keys = job.dedup_id.as_ref().map_or(0, String::len) + job.ordering_key.as_ref().map_or(0, String::len);
    job.payload.len() + headers + keys + FIELDS_BYTES
}

/// `onceq enqueue`.
#[derive(Debug, Clone, Args)]
pub struct EnqueueArgs {
    /// Server, token and output format.
    #[command(flatten)]
    pub connection: Connection,
    /// The queue (created with defaults if it does not exist).
    pub queue: QueueName,
    /// The payload, as JSON text (e.g. '{"to":"ada@example.com"}', or '"text"' for a string).
    /// Without it, JSON lines are read from stdin, one job per line.
    pub payload: Option<String>,
    /// Ready after this many milliseconds.
    #[arg(long, conflicts_with = "run_at", value_parser = clap::value_parser!(u64).range(0..=DELAY_MS_MAX))]
    pub delay_ms: Option<u64>,
    /// Ready at this RFC 3339 time, e.g. 2026-01-01T12:00:00Z.
    #[arg(long, value_parser = parse_time)]
    pub run_at: Option<Timestamp>,
    /// Higher runs first (default 0).
    #[arg(long, allow_negative_numbers = true,
          value_parser = clap::value_parser!(i32).range(i64::from(PRIORITY_MIN)..=i64::from(PRIORITY_MAX)))]
    pub priority: Option<i32>,
    /// Leases allowed before dead-lettering (default: the queue's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(ATTEMPTS_MAX)))]
    pub max_attempts: Option<u32>,
    /// Producer dedup id: a second enqueue with it inside the queue's window returns the first
    /// job's id and creates nothing. Only with a PAYLOAD argument (stdin lines carry their own).
    #[arg(long)]
    pub dedup_id: Option<String>,
    /// A header NAME=VALUE; repeat for more.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// Ordering key (1 to 256 bytes): in a per_key queue, the jobs of one key run one at a
    /// time, in enqueue order. The default of every stdin line (a line's own wins).
    #[arg(long, value_name = "KEY", value_parser = parse_ordering_key)]
    pub ordering_key: Option<String>,
    /// Unique job: its key is its dedup id (`dedup_id`) or the canonical form of its JSON
    /// payload (`payload`); while the key is held, an enqueue creates nothing and returns the
    /// holder's id as a duplicate. Needs --unique-while. The default of every stdin line (a
    /// line's own `unique` wins).
    #[arg(long, value_name = "BY", value_parser = ["dedup_id", "payload"], requires = "unique_while")]
    pub unique_by: Option<String>,
    /// How long a unique job holds its key: `pending` (scheduled or ready), `active` (or
    /// leased) or `window` (--unique-window-ms after the enqueue).
    #[arg(long, value_name = "WHILE", value_parser = ["pending", "active", "window"], requires = "unique_by")]
    pub unique_while: Option<String>,
    /// With --unique-while window: how long, in ms (1 to 604800000).
    #[arg(long, value_name = "MS", requires = "unique_while")]
    pub unique_window_ms: Option<u64>,
}

fn parse_ordering_key(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > ORDERING_KEY_LEN_MAX {
        return Err(format!("the ordering key is {} bytes; it must be 1 to {ORDERING_KEY_LEN_MAX}", text.len()));
    }
    Ok(text.to_owned())
}

impl EnqueueArgs {
    /// The job for `payload` with these flags.
    fn job(&self, payload: &str) -> NewJob {
        let mut job = NewJob::new(payload.as_bytes().to_vec());
        self.apply_defaults(&mut job, true, true, true);
        job.dedup_id = self.dedup_id.clone();
        job
    }

    /// Applies the flags to the fields a line left out.
    fn apply_defaults(&self, job: &mut NewJob, schedule: bool, priority: bool, max_attempts: bool) {
        if schedule {
            job.schedule = match (self.delay_ms, self.run_at) {
                (Some(delay_ms), _) => Schedule::Delay { delay_ms },
                (None, Some(at)) => Schedule::At(at),
                (None, None) => Schedule::Now,
            };
        }
        if priority {
            job.priority = self.priority.unwrap_or(0);
        }
        if max_attempts {
            job.max_attempts = self.max_attempts;
        }
        for (name, value) in &self.headers {
            job.headers.entry(name.clone()).or_insert_with(|| value.clone());
        }
        if job.ordering_key.is_none() {
            job.ordering_key.clone_from(&self.ordering_key);
        }
        if job.unique.is_none() {
            job.unique = self.unique();
        }
    }

    /// The `unique` the flags ask for. (Clap lets only known names through, and requires both
    /// names together; the window is checked with the job.)
    fn unique(&self) -> Option<Unique> {
        let (by, held_while) = (self.unique_by.clone()?, self.unique_while.clone()?);
        UniqueSpec { by, held_while, window_ms: self.unique_window_ms }.into_unique().ok()
    }

    /// The job of one stdin line (1-based `line_number`, for messages).
    pub fn job_of_line(&self, line: &str, line_number: u64) -> Result<NewJob, String> {
        let text = line.trim();
        let at = |message: &str| format!("stdin line {line_number}: {message}");
        if is_job_object(text) {
            let wire: EnqueueJob = serde_json::from_str(text).map_err(|e| at(&e.to_string()))?;
            let (schedule, priority, max_attempts) = (
                wire.delay_ms.is_none() && wire.run_at.is_none(),
                wire.priority.is_none(),
                wire.max_attempts.is_none(),
            );
            let mut job = wire.into_new_job(0).map_err(|e| at(&message_of(e).replacen("item 0: ", "", 1)))?;
            self.apply_defaults(&mut job, schedule, priority, max_attempts);
            job.validate().map_err(|e| at(&message_of(e)))?;
            Ok(job)
        } else {
            serde_json::from_str::<IgnoredAny>(text).map_err(|e| at(&format!("not JSON ({e})")))?;
            let mut job = NewJob::new(text.as_bytes().to_vec());
            self.apply_defaults(&mut job, true, true, true);
            job.validate().map_err(|e| at(&message_of(e)))?;
            Ok(job)
        }
    }
}

/// Whether a line is a job object (an object with a `"payload"` key) rather than a payload.
fn is_job_object(text: &str) -> bool {
    text.starts_with('{')
        && serde_json::from_str::<std::collections::BTreeMap<String, IgnoredAny>>(text)
            .is_ok_and(|fields| fields.contains_key("payload") || fields.contains_key("payload_base64"))
}

/// An error's message without its kind's prefix.
fn message_of(error: Error) -> String {
    match error {
        Error::InvalidRequest(m) | Error::PayloadTooLarge(m) => m,
        other => other.to_string(),
    }
}

/// Runs `onceq enqueue`.
pub fn run(args: &EnqueueArgs) -> Result<(), CliError> {
    block_on(&args.connection, |session| async move {
        match &args.payload {
            Some(payload) => one(&session, args, payload).await,
            None => {
                if args.dedup_id.is_some() {
                    return Err(CliError::Usage(
                        "--dedup-id applies to a PAYLOAD argument; stdin lines carry their own \"dedup_id\"".into(),
                    ));
                }
                lines(&session, args).await
            }
        }
    })
}

async fn one(session: &Session, args: &EnqueueArgs, payload: &str) -> Result<(), CliError> {
    serde_json::from_str::<IgnoredAny>(payload).map_err(|e| {
        CliError::Usage(format!(
            "PAYLOAD is not JSON ({e}); give JSON text, quoted for the shell, e.g. '{{\"to\":\"ada\"}}' or '\"hello\"'"
        ))
    })?;
    let job = args.job(payload);
    job.validate().map_err(|e| CliError::Usage(message_of(e)))?;
    let enqueued = session.client.job_enqueue(&args.queue, vec![job]).await.map_err(|e| session.failure(e))?;
    print_enqueued(session, &args.queue, enqueued, false)
}

/// Where the jobs of a stdin run have got to, for the message after a failure.
#[derive(Debug, Default)]
struct Sent {
    /// Jobs enqueued so far.
    jobs: u64,
    /// The last stdin line whose job is enqueued (0: none).
    through_line: u64,
}

impl Sent {
    fn so_far(&self) -> String {
        match self.jobs {
            0 => "nothing was enqueued".to_owned(),
            n => format!("the {n} jobs of stdin lines 1-{} were enqueued, nothing after", self.through_line),
        }
    }
}

async fn lines(session: &Session, args: &EnqueueArgs) -> Result<(), CliError> {
    let stdin_is_terminal = std::io::stdin().is_terminal();
    if stdin_is_terminal {
        eprintln!("onceq: reading jobs from stdin, one JSON value per line; end with Ctrl-D");
    }
    let progress = progress_bar(&args.queue, std::io::stderr().is_terminal() && !stdin_is_terminal);
    let mut reader = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut batch: Vec<NewJob> = Vec::new();
    let mut batch_bytes = 0;
    let mut batch_last_line = 0;
    let mut enqueued: Vec<Enqueued> = Vec::new();
    let mut sent = Sent::default();
    let mut line_number = 0;
    loop {
        let line = reader.next_line().await.map_err(|e| {
            progress.abandon();
            CliError::Failed(format!("reading stdin after line {line_number}: {e}; {}", sent.so_far()))
        })?;
        let Some(line) = line else { break };
        line_number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let job = args.job_of_line(&line, line_number).map_err(|message| {
            progress.abandon();
            CliError::Usage(format!("{message}; {}", sent.so_far()))
        })?;
        let job_bytes = wire_bytes(&job);
        if !batch.is_empty() && batch_bytes + job_bytes > BATCH_BYTES_MAX {
            send(session, &args.queue, &mut batch, &mut enqueued, &mut sent, batch_last_line, &progress).await?;
            batch_bytes = 0;
        }
        batch_bytes += job_bytes;
        batch.push(job);
        batch_last_line = line_number;
        if batch.len() == ENQUEUE_BATCH_MAX {
            send(session, &args.queue, &mut batch, &mut enqueued, &mut sent, batch_last_line, &progress).await?;
            batch_bytes = 0;
        }
    }
    if !batch.is_empty() {
        send(session, &args.queue, &mut batch, &mut enqueued, &mut sent, batch_last_line, &progress).await?;
    }
    progress.finish_and_clear();
    print_enqueued(session, &args.queue, enqueued, true)
}

/// Sends one batch; on failure, says what was enqueued before it.
async fn send(
    session: &Session,
    queue: &QueueName,
    batch: &mut Vec<NewJob>,
    enqueued: &mut Vec<Enqueued>,
    sent: &mut Sent,
    last_line: u64,
    progress: &ProgressBar,
) -> Result<(), CliError> {
    let jobs = std::mem::take(batch);
    let count = jobs.len() as u64;
    match session.client.job_enqueue(queue, jobs).await {
        Ok(results) => {
            enqueued.extend(results);
            sent.jobs += count;
            sent.through_line = last_line;
            progress.inc(count);
            Ok(())
        }
        Err(e) => {
            progress.abandon();
            let so_far = sent.so_far();
            Err(match session.failure(e) {
                CliError::Unavailable(m) => CliError::Unavailable(format!("{m}; {so_far}")),
                CliError::Usage(m) => CliError::Usage(format!("{m}; {so_far}")),
                CliError::Failed(m) => CliError::Failed(format!("{m}; {so_far}")),
            })
        }
    }
}

/// A spinner with the count and rate on stderr when a person watches it; hidden otherwise.
fn progress_bar(queue: &QueueName, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let template = format!("{{spinner}} {{human_pos}} jobs enqueued to {queue} ({{rate}}, {{elapsed}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        let style = style.with_key("rate", |state: &ProgressState, out: &mut dyn std::fmt::Write| {
            let _ = write!(out, "{:.0} jobs/s", state.per_sec());
        });
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(100));
    bar
}

fn print_enqueued(session: &Session, queue: &QueueName, jobs: Vec<Enqueued>, summary: bool) -> Result<(), CliError> {
    match session.output {
        Output::Json => session.print_json(&EnqueueResponse { jobs }),
        Output::Table if summary => {
            outln!("{}", summary_line(queue, &jobs));
            Ok(())
        }
        Output::Table => {
            let mut table = Table::new(&[("ID", Align::Right), ("DUPLICATE", Align::Left)]);
            for job in jobs {
                table.row(vec![job.id.to_string(), super::table::yes_no(job.duplicate)]);
            }
            out!("{}", table.render());
            Ok(())
        }
    }
}

/// `enqueued 1,000 jobs to emails: 997 new, 3 duplicates (ids 1-997)`.
fn summary_line(queue: &QueueName, jobs: &[Enqueued]) -> String {
    let duplicates = jobs.iter().filter(|job| job.duplicate).count();
    let new = jobs.len() - duplicates;
    let ids = match (jobs.iter().map(|j| j.id).min(), jobs.iter().map(|j| j.id).max()) {
        (Some(low), Some(high)) if low == high => format!(" (id {low})"),
        (Some(low), Some(high)) => format!(" (ids {low} to {high})"),
        _ => String::new(),
    };
    format!("enqueued {} jobs to {queue}: {new} new, {duplicates} duplicates{ids}", jobs.len())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use onceq_core::{JobId, UniqueBy, UniqueWhile};

    use super::*;
    use crate::{Cli, Command};

    fn parse(args: &[&str]) -> EnqueueArgs {
        match Cli::try_parse_from(args) {
            Ok(Cli { command: Command::Enqueue(enqueue), .. }) => enqueue,
            other => panic!("{args:?} did not parse as enqueue: {other:?}"),
        }
    }

    #[test]
    fn an_argument_job_takes_every_flag() {
        let args = parse(&[
            "onceq",
            "enqueue",
            "emails",
            r#"{"to":"ada"}"#,
            "--delay-ms",
            "500",
            "--priority",
            "-3",
            "--max-attempts",
            "4",
            "--dedup-id",
            "signup-42",
            "--header",
            "trace=abc",
            "--header",
            "tenant=7",
            "--ordering-key",
            "customer-7",
        ]);
        let job = args.job(args.payload.as_deref().unwrap_or_default());
        let expected = NewJob::new(r#"{"to":"ada"}"#)
            .delay_ms(500)
            .priority(-3)
            .max_attempts(4)
            .dedup_id("signup-42")
            .header("trace", "abc")
            .header("tenant", "7")
            .ordering_key("customer-7");
        assert_eq!(job, expected);
    }

    #[test]
    fn the_ordering_key_is_every_lines_default_and_a_lines_own_wins() {
        let args = parse(&["onceq", "enqueue", "q", "--ordering-key", "flag"]);
        assert_eq!(args.job_of_line("1", 1), Ok(NewJob::new("1").ordering_key("flag")));
        assert_eq!(
            args.job_of_line(r#"{"payload": 2, "ordering_key": "line"}"#, 2),
            Ok(NewJob::new("2").ordering_key("line"))
        );
        let empty = args.job_of_line(r#"{"payload": 3, "ordering_key": ""}"#, 3).err().unwrap_or_default();
        assert_eq!(empty, "stdin line 3: ordering key is 0 bytes; it must be 1 to 256");
        assert_eq!(parse(&["onceq", "enqueue", "q"]).job_of_line("4", 4).map(|j| j.ordering_key), Ok(None));
    }

    #[test]
    fn an_ordering_key_out_of_its_limit_is_a_usage_error() {
        let long = "k".repeat(ORDERING_KEY_LEN_MAX + 1);
        for bad in ["", long.as_str()] {
            let error = Cli::try_parse_from(["onceq", "enqueue", "q", "1", "--ordering-key", bad]).err();
            assert_eq!(error.as_ref().map(|e| e.exit_code()), Some(2), "{bad:?}: {error:?}");
            let text = error.map(|e| e.to_string()).unwrap_or_default();
            assert!(text.contains("must be 1 to 256"), "{text}");
        }
        let max = "k".repeat(ORDERING_KEY_LEN_MAX);
        assert_eq!(parse(&["onceq", "enqueue", "q", "1", "--ordering-key", &max]).ordering_key, Some(max));
    }

    #[test]
    fn unique_flags_are_every_lines_default_and_a_lines_own_wins() {
        let args = parse(&[
            "onceq",
            "enqueue",
            "q",
            "--unique-by",
            "payload",
            "--unique-while",
            "window",
            "--unique-window-ms",
            "5000",
        ]);
        let window = Unique::window(UniqueBy::Payload, 5_000);
        assert_eq!(args.job_of_line("1", 1), Ok(NewJob::new("1").unique(window)));
        let line = r#"{"payload": 2, "dedup_id": "d", "unique": {"by": "dedup_id", "while": "active"}}"#;
        let active = Unique::new(UniqueBy::DedupId, UniqueWhile::Active);
        assert_eq!(args.job_of_line(line, 2), Ok(NewJob::new("2").dedup_id("d").unique(active)));
        let bad = args.job_of_line(r#"{"payload": 3, "unique": {"by": "id", "while": "active"}}"#, 3);
        assert_eq!(bad.err().unwrap_or_default(), r#"stdin line 3: unique.by is "id"; it must be dedup_id or payload"#);
        let args = parse(&["onceq", "enqueue", "q", "{}", "--unique-by", "payload", "--unique-while", "pending"]);
        assert_eq!(args.job("{}").unique, Some(Unique::new(UniqueBy::Payload, UniqueWhile::Pending)));
        for bad in [
            vec!["--unique-by", "args", "--unique-while", "pending"],
            vec!["--unique-by", "payload"],
            vec!["--unique-while", "pending"],
            vec!["--unique-window-ms", "5"],
        ] {
            let error = Cli::try_parse_from([&["onceq", "enqueue", "q", "1"][..], &bad[..]].concat()).err();
            assert_eq!(error.as_ref().map(|e| e.exit_code()), Some(2), "{bad:?}: {error:?}");
        }
    }

    #[test]
    fn delay_and_run_at_exclude_each_other() {
        let error =
            Cli::try_parse_from(["onceq", "enqueue", "q", "1", "--delay-ms", "5", "--run-at", "2026-01-01T00:00:00Z"]);
        assert_eq!(error.map_err(|e| e.kind()).err(), Some(clap::error::ErrorKind::ArgumentConflict));
        let args = parse(&["onceq", "enqueue", "q", "1", "--run-at", "2026-01-01T00:00:00Z"]);
        assert_eq!(args.job("1").schedule, Schedule::At(Timestamp::from_millis(1_767_225_600_000)));
    }

    #[test]
    fn a_plain_line_is_a_payload_with_the_flags() {
        let args = parse(&["onceq", "enqueue", "q", "--priority", "2", "--header", "k=v"]);
        let job = args.job_of_line("  {\"n\": 1}  ", 1);
        assert_eq!(job, Ok(NewJob::new("{\"n\": 1}").priority(2).header("k", "v")));
        assert_eq!(args.job_of_line("\"text\"", 2), Ok(NewJob::new("\"text\"").priority(2).header("k", "v")));
        // An object without a "payload" key is a payload too.
        assert_eq!(args.job_of_line(r#"{"to":"ada"}"#, 3).map(|j| j.payload), Ok(br#"{"to":"ada"}"#.to_vec()));
    }

    #[test]
    fn a_job_object_line_overrides_the_flags() {
        let args = parse(&["onceq", "enqueue", "q", "--priority", "2", "--delay-ms", "9", "--header", "k=flag"]);
        let line = r#"{"payload": {"n": 3}, "priority": 7, "dedup_id": "d-3", "headers": {"k": "line", "x": "1"}}"#;
        let expected =
            NewJob::new(r#"{"n": 3}"#).priority(7).delay_ms(9).dedup_id("d-3").header("k", "line").header("x", "1");
        assert_eq!(args.job_of_line(line, 1), Ok(expected));
        let scheduled = args.job_of_line(r#"{"payload": 1, "run_at": "2026-01-01T00:00:00Z"}"#, 2);
        assert_eq!(scheduled.map(|j| j.schedule), Ok(Schedule::At(Timestamp::from_millis(1_767_225_600_000))));
    }

    #[test]
    fn bad_lines_name_their_line() {
        let args = parse(&["onceq", "enqueue", "q"]);
        let not_json = args.job_of_line("{oops", 57).err().unwrap_or_default();
        assert!(not_json.starts_with("stdin line 57: not JSON"), "{not_json}");
        let unknown = args.job_of_line(r#"{"payload": 1, "colour": "red"}"#, 3).err().unwrap_or_default();
        assert!(unknown.starts_with("stdin line 3: unknown field `colour`"), "{unknown}");
        let both = args.job_of_line(r#"{"payload": 1, "delay_ms": 1, "run_at": "2026-01-01T00:00:00Z"}"#, 4);
        assert_eq!(both, Err("stdin line 4: give delay_ms or run_at, not both".into()));
        let attempts = args.job_of_line(r#"{"payload": 1, "max_attempts": 0}"#, 5).err().unwrap_or_default();
        assert!(attempts.starts_with("stdin line 5: max_attempts is 0"), "{attempts}");
    }

    #[test]
    fn the_summary_counts_new_jobs_and_duplicates() {
        let queue = QueueName::new("emails").unwrap_or_else(|e| panic!("{e}"));
        let jobs = [
            Enqueued { id: JobId::new(4), duplicate: false },
            Enqueued { id: JobId::new(2), duplicate: true },
            Enqueued { id: JobId::new(5), duplicate: false },
        ];
        assert_eq!(summary_line(&queue, &jobs), "enqueued 3 jobs to emails: 2 new, 1 duplicates (ids 2 to 5)");
        assert_eq!(summary_line(&queue, &[]), "enqueued 0 jobs to emails: 0 new, 0 duplicates");
    }

    #[test]
    fn a_full_batch_of_the_largest_jobs_fits_the_body_limit() {
        // The server takes bodies up to 16 MiB; a batch is cut at BATCH_BYTES_MAX.
        let largest = NewJob::new(vec![b'1'; onceq_core::limits::PAYLOAD_BYTES_MAX]);
        assert!(BATCH_BYTES_MAX + wire_bytes(&largest) < 16 * 1024 * 1024);
        let small = NewJob::new("1").header("k", "v").dedup_id("d");
        assert_eq!(wire_bytes(&small), 1 + 8 + 1 + 160);
    }

    #[test]
    fn what_was_sent_is_said_after_a_failure() {
        assert_eq!(Sent::default().so_far(), "nothing was enqueued");
        let sent = Sent { jobs: 1000, through_line: 1002 };
        assert_eq!(sent.so_far(), "the 1000 jobs of stdin lines 1-1002 were enqueued, nothing after");
    }
}
