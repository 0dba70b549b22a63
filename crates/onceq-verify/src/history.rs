//! The recorded history of a verify run: what was asked of the target, when, and what came back.
//!
//! Times are milliseconds. `at_ms` (invoke and completion times) is the verify process's wall
//! clock, as Unix milliseconds; store timestamps (`lease_expires_at_ms`) are the target's clock,
//! which for every target onceq supports runs on the same machine as the verify process (the
//! embedded store and a local server use the system clock, PostgreSQL its `now()`). The checker
//! allows [`CLOCK_MARGIN_MS`] between the two before it calls anything a violation.
//!
//! Every operation is a pair of events: an invoke, then at most one completion with the same
//! `op` number. An invoke with no completion (the process crashed, the run stopped) counts as an
//! unknown outcome.
//!
//! # What the checker relies on
//!
//! [`History::validate`] checks the structure; these conventions of the recorder it cannot check:
//! - `at_ms` never goes backwards: read it from a monotonic clock anchored at the wall clock's
//!   Unix milliseconds when the run starts (a wall-clock step would read as a violation).
//! - An invoke is recorded before the request leaves, a completion after the answer arrives, so
//!   the target acted between the two. A batch enqueue is one op per value (all completing
//!   together); a lease call is one op listing every job it handed out.
//! - [`Outcome::Fail`] only for a definite refusal that changed nothing (`lease_lost`,
//!   `job_not_found`, an invalid request); everything else that is not a success is
//!   [`Outcome::Unknown`]. A settle the target refused must be `Fail`, never `Ok`.
//! - Every call the worker runtime makes for a lease is recorded: acks, nacks, releases, fails
//!   (settles, which end the lease) and extends (heartbeats, which move its expiry). A lease
//!   ends only by expiry or by a settle. A release gives its attempt back, so the next lease of
//!   the job may carry the same attempt number; otherwise the attempts of one job strictly
//!   increase from lease to lease. The workload never redrives a job.
//! - A call the worker would have made after a simulated crash, or that a simulated partition
//!   swallowed, never reached the target and is not recorded.
//! - In `at_most_once`, enqueues that may be retried carry a dedup id: duplicate deliveries are
//!   counted per value, so a second job with the same value would read as a duplicate delivery.
//! - Read this module's times with [`crate::checker`]'s rules in mind: it takes the latest
//!   possible moment of an operation (its completion) to show something was still live and the
//!   earliest (its invoke) to show something had ended.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use onceq_core::{Error, ErrorKind};
use serde::{Deserialize, Serialize};

use onceq_core::DeliveryMode;

/// How far apart the verify process's clock and the target's may be, in milliseconds, before a
/// comparison between them is trusted.
pub const CLOCK_MARGIN_MS: i64 = 250;

/// The outcome of a completed operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The target said it took effect.
    Ok,
    /// The target said it did not take effect (an error with a definite answer, such as
    /// `lease_lost`).
    Fail,
    /// Nobody can tell: a timeout, a dropped connection, a dropped response, a crash.
    Unknown,
}

/// What an operation asked for. Values are the workload's unique job values: each job's payload
/// carries one, so that effects in the ledger can be traced to enqueues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Request {
    /// Enqueue the job carrying `value`, with a dedup id where the mode needs one. A retry of an
    /// enqueue whose outcome was unknown is a new operation with the same value.
    Enqueue {
        /// The job's value.
        value: u64,
        /// Its dedup id, if any.
        dedup_id: Option<String>,
    },
    /// Lease up to `max` jobs with this visibility timeout.
    Lease {
        /// Batch size asked for.
        max: u32,
        /// The visibility timeout asked for.
        visibility_timeout_ms: u64,
    },
    /// Ack one lease.
    Ack {
        /// The job.
        job_id: u64,
        /// The lease token (hex).
        lease_token: String,
    },
    /// Nack one lease (retry later).
    Nack {
        /// The job.
        job_id: u64,
        /// The lease token (hex).
        lease_token: String,
    },
    /// Release one lease (ready again without counting the attempt).
    Release {
        /// The job.
        job_id: u64,
        /// The lease token (hex).
        lease_token: String,
    },
    /// Fail one lease (dead-letter now).
    Fail {
        /// The job.
        job_id: u64,
        /// The lease token (hex).
        lease_token: String,
    },
    /// Commit one lease's ack with the jobs its handler produced (a pipeline stage's commit,
    /// [`crate::pipeline`]): it settles the lease as an ack does, all or nothing with its outputs.
    /// A retry of a commit whose outcome was unknown is a new operation with the same lease (and
    /// the same commit id, so it replays).
    Commit {
        /// The input job.
        job_id: u64,
        /// The lease token (hex).
        lease_token: String,
    },
    /// Extend one lease (a heartbeat).
    Extend {
        /// The job.
        job_id: u64,
        /// The lease token (hex).
        lease_token: String,
        /// The visibility timeout asked for, from now.
        visibility_timeout_ms: u64,
    },
}

impl Request {
    /// The lease a settle or extend names: (job id, lease token).
    pub fn lease(&self) -> Option<(u64, &str)> {
        match self {
            Request::Ack { job_id, lease_token }
            | Request::Nack { job_id, lease_token }
            | Request::Release { job_id, lease_token }
            | Request::Fail { job_id, lease_token }
            | Request::Commit { job_id, lease_token }
            | Request::Extend { job_id, lease_token, .. } => Some((*job_id, lease_token)),
            Request::Enqueue { .. } | Request::Lease { .. } => None,
        }
    }
}

/// What a completed operation returned, beyond its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Response {
    /// Nothing beyond the outcome (acks, nacks, failures, unknowns).
    None,
    /// An enqueue that returned: the job's id, and whether it was a dedup duplicate.
    Enqueued {
        /// The job id (the original's for a duplicate).
        job_id: u64,
        /// True when the dedup id had been seen and nothing was created.
        duplicate: bool,
    },
    /// A lease that returned these jobs.
    Leased {
        /// The jobs handed out.
        jobs: Vec<Lease>,
    },
    /// A commit that applied (`replayed: false`), or whose commit id had applied before and
    /// returned that first outcome (`replayed: true`).
    Committed {
        /// True when the target replayed an earlier application of the same commit id.
        replayed: bool,
    },
    /// An extend that moved the lease's expiry here (target clock, Unix ms).
    Extended {
        /// The new expiry.
        lease_expires_at_ms: i64,
    },
}

/// One job handed out by a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The job.
    pub job_id: u64,
    /// The value its payload carries.
    pub value: u64,
    /// The lease token (hex).
    pub lease_token: String,
    /// The attempt this lease is (1-based).
    pub attempt: u32,
    /// When the lease expires, by the target's clock (Unix ms).
    pub lease_expires_at_ms: i64,
}

/// One event of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Event {
    /// An operation was invoked.
    Invoke {
        /// The operation's number, unique in the history.
        op: u64,
        /// Which producer or worker made it (for reports).
        process: u32,
        /// When (verify clock, Unix ms).
        at_ms: i64,
        /// What was asked.
        request: Request,
    },
    /// An operation completed.
    Complete {
        /// The operation's number.
        op: u64,
        /// When (verify clock, Unix ms).
        at_ms: i64,
        /// How it ended.
        outcome: Outcome,
        /// What it returned.
        response: Response,
    },
}

/// One effect a worker applied, as the ledger recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Effect {
    /// The value of the job whose effect this is.
    pub value: u64,
    /// The job.
    pub job_id: u64,
    /// The lease under which it was applied (hex).
    pub lease_token: String,
    /// When (verify clock, Unix ms).
    pub at_ms: i64,
}

/// A job found in the dead-letter queue when the run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The job.
    pub job_id: u64,
    /// Its value.
    pub value: u64,
    /// How many attempt errors it carries.
    pub errors: u32,
}

/// Everything the checker reads about one mode's run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The delivery mode of the queue the run used.
    pub mode: DeliveryMode,
    /// The operations, in the order they were recorded.
    pub events: Vec<Event>,
    /// The ledger's effects, in the order they were applied.
    pub effects: Vec<Effect>,
    /// The dead letters at the end of the run.
    pub dead: Vec<DeadLetter>,
    /// When the last fault was injected (verify clock, Unix ms), if any was.
    pub last_fault_at_ms: Option<i64>,
    /// When the last job was settled, or the run ended (verify clock, Unix ms).
    pub drained_at_ms: i64,
    /// In an ordered run (a `per_key` queue), how many ordering keys the values were spread
    /// over: the key of value `v` is `v mod ordered_keys`. `None` for an unordered run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordered_keys: Option<u64>,
}

/// The ordering key verify gives value `value` in an ordered run over `keys` keys.
pub fn key_of(value: u64, keys: u64) -> String {
    format!("k{}", value % keys.max(1))
}

/// How many problems [`History::validate`] describes in its error (it counts them all).
const PROBLEMS_SHOWN_MAX: usize = 5;

/// Why a history could not be read, written, or trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    /// Reading or writing the history failed.
    #[error("reading or writing the history: {0}")]
    Io(#[from] std::io::Error),
    /// A line of a JSON-lines history is not a [`Record`].
    #[error("line {line} of the history is not a history record: {source}")]
    Json {
        /// The line (1-based).
        line: usize,
        /// Why it did not parse.
        source: serde_json::Error,
    },
    /// A record could not be encoded.
    #[error("encoding a history record: {0}")]
    Encode(#[source] serde_json::Error),
    /// A JSON-lines history has no [`Record::Header`].
    #[error("the history has no header record (mode, last_fault_at_ms, drained_at_ms)")]
    HeaderMissing,
    /// A JSON-lines history has more than one [`Record::Header`].
    #[error("line {line} of the history is a second header record")]
    HeaderRepeated {
        /// The line (1-based) of the second header.
        line: usize,
    },
    /// The history breaks its own structure (see [`History::validate`]).
    #[error("the history is malformed: {count} problems, the first: {}", problems.join("; "))]
    Malformed {
        /// How many problems were found.
        count: usize,
        /// The first few, in words.
        problems: Vec<String>,
    },
}

/// One line of a history in JSON lines: the header, or one event, effect or dead letter. A
/// recorder can stream records as the run goes (the header, which holds end-of-run figures, may
/// come last); [`History::read_jsonl`] puts them back together, keeping each kind in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "record")]
pub enum Record {
    /// The run's mode and end-of-run times (exactly one per history).
    Header {
        /// [`History::mode`].
        mode: DeliveryMode,
        /// [`History::last_fault_at_ms`].
        last_fault_at_ms: Option<i64>,
        /// [`History::drained_at_ms`].
        drained_at_ms: i64,
        /// [`History::ordered_keys`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ordered_keys: Option<u64>,
    },
    /// One of [`History::events`].
    Event(Event),
    /// One of [`History::effects`].
    Effect(Effect),
    /// One of [`History::dead`].
    Dead(DeadLetter),
}

impl Record {
    /// Writes the record as one line of JSON.
    pub fn write_line<W: std::io::Write>(&self, out: &mut W) -> Result<(), HistoryError> {
        serde_json::to_writer(&mut *out, self).map_err(HistoryError::Encode)?;
        out.write_all(b"\n")?;
        Ok(())
    }
}

impl History {
    /// Writes the history as JSON lines: the header, then the events, effects and dead letters,
    /// one [`Record`] per line. [`History::read_jsonl`] reads it back unchanged, so a recorded
    /// run can be checked again.
    pub fn write_jsonl<W: std::io::Write>(&self, out: W) -> Result<(), HistoryError> {
        let mut out = std::io::BufWriter::new(out);
        Record::Header {
            mode: self.mode,
            last_fault_at_ms: self.last_fault_at_ms,
            drained_at_ms: self.drained_at_ms,
            ordered_keys: self.ordered_keys,
        }
        .write_line(&mut out)?;
        for event in &self.events {
            Record::Event(event.clone()).write_line(&mut out)?;
        }
        for effect in &self.effects {
            Record::Effect(effect.clone()).write_line(&mut out)?;
        }
        for dead in &self.dead {
            Record::Dead(dead.clone()).write_line(&mut out)?;
        }
        std::io::Write::flush(&mut out)?;
        Ok(())
    }

    /// Reads a history written as JSON lines ([`History::write_jsonl`], or records streamed by a
    /// recorder in any order with exactly one header). Blank lines are skipped. It does not
    /// [`validate`](History::validate) the history; [`check`](crate::checker::check) does.
    pub fn read_jsonl<R: std::io::BufRead>(input: R) -> Result<History, HistoryError> {
        let mut header = None;
        let mut events = Vec::new();
        let mut effects = Vec::new();
        let mut dead = Vec::new();
        for (index, line) in input.lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let record: Record =
                serde_json::from_str(&line).map_err(|source| HistoryError::Json { line: index + 1, source })?;
            match record {
                Record::Header { mode, last_fault_at_ms, drained_at_ms, ordered_keys } => {
                    if header.is_some() {
                        return Err(HistoryError::HeaderRepeated { line: index + 1 });
                    }
                    header = Some((mode, last_fault_at_ms, drained_at_ms, ordered_keys));
                }
                Record::Event(event) => events.push(event),
                Record::Effect(effect) => effects.push(effect),
                Record::Dead(letter) => dead.push(letter),
            }
        }
        let (mode, last_fault_at_ms, drained_at_ms, ordered_keys) = header.ok_or(HistoryError::HeaderMissing)?;
        Ok(History { mode, events, effects, dead, last_fault_at_ms, drained_at_ms, ordered_keys })
    }

    /// Checks the history's own structure, which the checker relies on:
    /// - every op number is invoked once, and completed at most once, after its invoke (in event
    ///   order and in time: a completion's `at_ms` is not before its invoke's);
    /// - a completion with outcome ok carries the response its request calls for
    ///   ([`Response::Enqueued`] for an enqueue, [`Response::Leased`] for a lease,
    ///   [`Response::Extended`] for an extend, [`Response::Committed`] for a commit,
    ///   [`Response::None`] for an ack, nack, release or fail); a failed or unknown one carries
    ///   [`Response::None`].
    ///
    /// It does not judge the target: anything the target could have caused is the checker's
    /// business. The error counts every problem and describes the first few.
    pub fn validate(&self) -> Result<(), HistoryError> {
        use std::collections::HashMap;

        /// What validation remembers of one op: its invoke time and request, and whether it
        /// has completed.
        struct Seen<'h> {
            at_ms: i64,
            request: &'h Request,
            completed: bool,
        }

        let mut count = 0usize;
        let mut problems = Vec::new();
        let mut problem = |text: String| {
            count += 1;
            if problems.len() < PROBLEMS_SHOWN_MAX {
                problems.push(text);
            }
        };
        let mut ops: HashMap<u64, Seen<'_>> = HashMap::with_capacity(self.events.len() / 2 + 1);
        for event in &self.events {
            match event {
                Event::Invoke { op, at_ms, request, .. } => {
                    if ops.contains_key(op) {
                        problem(format!("op {op} is invoked more than once"));
                    } else {
                        ops.insert(*op, Seen { at_ms: *at_ms, request, completed: false });
                    }
                }
                Event::Complete { op, at_ms, outcome, response } => {
                    let Some(seen) = ops.get_mut(op) else {
                        problem(format!("op {op} completes before (or without) its invoke"));
                        continue;
                    };
                    if seen.completed {
                        problem(format!("op {op} completes more than once"));
                        continue;
                    }
                    seen.completed = true;
                    if *at_ms < seen.at_ms {
                        problem(format!(
                            "op {op} completes at {at_ms} ms, before its invoke at {} ms \
                             (record times from a monotonic clock)",
                            seen.at_ms
                        ));
                    }
                    let fits = matches!(
                        (outcome, seen.request, response),
                        (Outcome::Ok, Request::Enqueue { .. }, Response::Enqueued { .. })
                            | (Outcome::Ok, Request::Lease { .. }, Response::Leased { .. })
                            | (
                                Outcome::Ok,
                                Request::Ack { .. }
                                    | Request::Nack { .. }
                                    | Request::Release { .. }
                                    | Request::Fail { .. },
                                Response::None
                            )
                            | (Outcome::Ok, Request::Extend { .. }, Response::Extended { .. })
                            | (Outcome::Ok, Request::Commit { .. }, Response::Committed { .. })
                            | (Outcome::Fail | Outcome::Unknown, _, Response::None)
                    );
                    if !fits {
                        problem(format!(
                            "op {op} completes {outcome:?} with a response that does not fit its \
                             request ({response:?})"
                        ));
                    }
                }
            }
        }
        if count == 0 {
            Ok(())
        } else {
            Err(HistoryError::Malformed { count, problems })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recording

/// The verify clock: Unix milliseconds, read once from the system clock and advanced by the
/// monotonic clock since, so a completion is never recorded before its invoke (a step of the
/// system clock during a run cannot reorder events).
pub fn now_ms() -> i64 {
    static BASE: std::sync::OnceLock<(i64, Instant)> = std::sync::OnceLock::new();
    let (unix_ms, at) = BASE.get_or_init(|| {
        let unix =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
        (unix, Instant::now())
    });
    unix_ms.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
}

/// Records operations as they happen.
#[derive(Debug, Default)]
pub struct Recorder {
    next_op: AtomicU64,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    fn push(&self, event: Event) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(event);
    }

    /// Records an invoke now; returns its op number.
    pub fn invoke(&self, process: u32, request: Request) -> u64 {
        let op = self.next_op.fetch_add(1, Ordering::Relaxed);
        self.push(Event::Invoke { op, process, at_ms: now_ms(), request });
        op
    }

    /// Records the completion of `op` now.
    pub fn complete(&self, op: u64, outcome: Outcome, response: Response) {
        self.push(Event::Complete { op, at_ms: now_ms(), outcome, response });
    }

    /// The events so far.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The outcome an error stands for: a definite refusal, or unknown.
pub fn outcome_of(error: &Error) -> Outcome {
    match error.kind() {
        ErrorKind::LeaseLost | ErrorKind::NotFound => Outcome::Fail,
        ErrorKind::InvalidRequest | ErrorKind::PayloadTooLarge | ErrorKind::Conflict | ErrorKind::RateLimited => {
            Outcome::Fail
        }
        _ => Outcome::Unknown,
    }
}

/// The payload of every job a workload enqueues: its value.
#[derive(Debug, Serialize, Deserialize)]
pub struct Payload {
    /// The value.
    pub value: u64,
}

/// The value a payload carries, if verify wrote it.
pub fn value_of(payload: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Payload>(payload).ok().map(|p| p.value)
}
