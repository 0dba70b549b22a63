//! [`Relay`]: claims committed outbox messages, publishes each through a [`Sink`] with its dedup
//! id, and marks it sent only after the sink confirmed it.
//!
//! # One round
//!
//! 1. Claim up to `batch_size` due messages, each the head of its ordering key (the lowest
//!    unsent id of the key) or without a key. On PostgreSQL the claim locks the rows
//!    (`FOR UPDATE SKIP LOCKED`) in a transaction that stays open until step 3 (see
//!    `postgres::source` for why this closes the publish-then-mark gap between relays).
//! 2. Publish them, at most `publish_concurrency` at once (they are of distinct keys, so their
//!    order does not matter), each with `dedup_id = <outbox name>-<row id>` and within
//!    `publish_timeout`.
//! 3. In one transaction: mark the confirmed ones sent; give each transient failure a retry
//!    after an exponential backoff with full jitter (`random(0, min(backoff_max,
//!    backoff_initial × multiplier^(attempt-1)))`), or park it in the dead letters once it has
//!    had `max_attempts` attempts; park every permanent failure at once.
//!
//! A failing head blocks only its own key: the rest of that key waits behind it (order is kept),
//! other keys and keyless messages go on. A parked head unblocks its key.
//!
//! A crash anywhere in a round leaves the claimed messages unmarked: they are published again,
//! with the same dedup ids, by the next round of any relay. The fail point
//! [`FAILPOINT_ENV`] makes a relay process abort right after a confirmed publish, to test this.
//!
//! # Waiting
//!
//! After a round that claimed nothing, the relay registers as sleeping, looks once more, and
//! waits for a wake-up (PostgreSQL: the `NOTIFY` a staging transaction sends on commit while a
//! relay sleeps; see `postgres::source`, "Wake-ups", for why only then, and why none is lost),
//! for the next retry to come due, or for the poll interval (PostgreSQL: a fallback for missed notifications, default 5 s; SQLite: the
//! only way to notice new messages, default 200 ms), whichever is first. A round that claimed
//! anything is followed at once by the next one.

use std::future::Future;
#[cfg(feature = "sqlite")]
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::limits::*;
#[cfg(feature = "postgres")]
use crate::postgres::source::PgSource;
use crate::source::{Backlog, Outcome, Source};
#[cfg(feature = "sqlite")]
use crate::sqlite::source::SqliteSource;
#[cfg(feature = "postgres")]
use crate::PgOutbox;
use crate::{metrics as names, OutboxError, OutboxMessage, PublishError, Result, Sink};

/// The fail point's environment variable: `crash_after_publish:<probability 0..1>` makes the
/// relay process abort (`std::process::abort`) right after a confirmed publish, before the
/// message is marked sent, with that probability per publish. For crash tests only.
pub const FAILPOINT_ENV: &str = "ONCEQ_OUTBOX_FAILPOINT";

/// Default of [`RelayOptions::batch_size`].
pub const BATCH_SIZE_DEFAULT: u32 = 100;
/// Default of [`RelayOptions::max_attempts`].
pub const MAX_ATTEMPTS_DEFAULT: u32 = 10;
/// Default of [`RelayOptions::backoff_initial`].
pub const BACKOFF_INITIAL_DEFAULT: Duration = Duration::from_secs(1);
/// Default of [`RelayOptions::backoff_max`]: one minute, so that a retry of a publish whose
/// confirmation was lost (at most this plus [`PUBLISH_TIMEOUT_DEFAULT`] after it) still lands
/// inside the destination's dedup window — JetStream's default `duplicate_window` is 2 minutes,
/// a onceq queue's default `dedup_window_ms` 5 minutes. A longer backoff needs a longer window.
pub const BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(60);
/// Default of [`RelayOptions::backoff_multiplier`].
pub const BACKOFF_MULTIPLIER_DEFAULT: f64 = 2.0;
/// Default of [`RelayOptions::publish_timeout`].
pub const PUBLISH_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// Default of [`RelayOptions::publish_concurrency`].
pub const PUBLISH_CONCURRENCY_DEFAULT: usize = 32;
/// Default of [`RelayOptions::retention`].
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(60 * 60);
/// Default of [`RelayOptions::connect_timeout`]: a database that cannot be reached is reported
/// at start in seconds.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);
/// Largest backoff multiplier.
pub const BACKOFF_MULTIPLIER_MAX: f64 = 100.0;
/// How often the backlog gauges are read from the database at most.
const GAUGES_EVERY: Duration = Duration::from_secs(1);
/// How often sent rows past their retention are deleted at most (and at least once per
/// retention).
const PURGE_EVERY_MAX: Duration = Duration::from_secs(60);
/// Pauses after a failed round (the database is down): doubling from the first to the last.
const ERROR_PAUSE_MS: (u64, u64) = (100, 5_000);

/// How a relay works. Every field has a default ([`RelayOptions::default`]) and a bound
/// ([`crate::limits`]); [`Relay::postgres`] and [`Relay::sqlite`] refuse a value past it.
#[derive(Debug, Clone, PartialEq)]
pub struct RelayOptions {
    /// The dedup-id prefix: each message is published with dedup id `<outbox name>-<row id>`.
    /// Give each outbox feeding one destination its own name, and never change it while messages
    /// may be in flight (a changed name changes the dedup ids). `None`: the PostgreSQL schema,
    /// or the SQLite file's name without its extension. 1 to [`OUTBOX_NAME_LEN_MAX`] characters
    /// of `[A-Za-z0-9._-]`.
    pub outbox_name: Option<String>,
    /// Most messages claimed per round, 1 to [`BATCH_SIZE_MAX`].
    pub batch_size: u32,
    /// Publish attempts a message gets before it is parked, 1 to [`ATTEMPTS_MAX`].
    pub max_attempts: u32,
    /// Backoff cap after the first failed attempt (full jitter: the delay is random between 0
    /// and the cap); at least 1 ms.
    pub backoff_initial: Duration,
    /// Largest backoff cap, at most [`BACKOFF_MS_MAX`] ms.
    pub backoff_max: Duration,
    /// Factor of the cap from one attempt to the next, 1 to [`BACKOFF_MULTIPLIER_MAX`].
    pub backoff_multiplier: f64,
    /// Longest wait for one publish before it counts as a transient failure, 1 ms to
    /// [`PUBLISH_TIMEOUT_MS_MAX`] ms. On PostgreSQL the batch's rows stay locked meanwhile.
    pub publish_timeout: Duration,
    /// Most publishes in flight at once within a batch, 1 to [`PUBLISH_CONCURRENCY_MAX`].
    pub publish_concurrency: usize,
    /// Longest sleep with nothing to do: on PostgreSQL a fallback for missed notifications
    /// (default 5 s); on SQLite the polling period (default 200 ms). 1 ms to
    /// [`POLL_INTERVAL_MS_MAX`] ms; `None`: the default of the outbox kind.
    pub poll_interval: Option<Duration>,
    /// How long sent rows are kept before they are deleted (for inspection), at most
    /// [`RETENTION_MS_MAX`] ms; zero deletes them when they are marked.
    pub retention: Duration,
    /// How long the PostgreSQL outbox's first connection may take at start before
    /// [`Relay::postgres`] fails with [`OutboxError::Unavailable`], 1 ms to
    /// [`CONNECT_TIMEOUT_MS_MAX`] ms.
    pub connect_timeout: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            outbox_name: None,
            batch_size: BATCH_SIZE_DEFAULT,
            max_attempts: MAX_ATTEMPTS_DEFAULT,
            backoff_initial: BACKOFF_INITIAL_DEFAULT,
            backoff_max: BACKOFF_MAX_DEFAULT,
            backoff_multiplier: BACKOFF_MULTIPLIER_DEFAULT,
            publish_timeout: PUBLISH_TIMEOUT_DEFAULT,
            publish_concurrency: PUBLISH_CONCURRENCY_DEFAULT,
            poll_interval: None,
            retention: RETENTION_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
        }
    }
}

impl RelayOptions {
    /// Checks every field against its bound.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(OutboxError::InvalidOptions(m));
        if let Some(name) = &self.outbox_name {
            validate_outbox_name(name)?;
        }
        if !(1..=BATCH_SIZE_MAX).contains(&self.batch_size) {
            return invalid(format!("batch size is {}; it must be 1 to {BATCH_SIZE_MAX}", self.batch_size));
        }
        if !(1..=ATTEMPTS_MAX).contains(&self.max_attempts) {
            return invalid(format!("max attempts is {}; it must be 1 to {ATTEMPTS_MAX}", self.max_attempts));
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if ms(self.backoff_initial) < 1
            || ms(self.backoff_max) > BACKOFF_MS_MAX
            || self.backoff_initial > self.backoff_max
        {
            return invalid(format!(
                "backoff is {} ms initial, {} ms max; they must satisfy 1 <= initial <= max <= {BACKOFF_MS_MAX} ms",
                ms(self.backoff_initial),
                ms(self.backoff_max)
            ));
        }
        if !(self.backoff_multiplier.is_finite() && (1.0..=BACKOFF_MULTIPLIER_MAX).contains(&self.backoff_multiplier)) {
            return invalid(format!(
                "backoff multiplier is {}; it must be 1 to {BACKOFF_MULTIPLIER_MAX}",
                self.backoff_multiplier
            ));
        }
        if !(1..=CONNECT_TIMEOUT_MS_MAX).contains(&ms(self.connect_timeout)) {
            return invalid(format!(
                "connect timeout is {} ms; it must be 1 to {CONNECT_TIMEOUT_MS_MAX} ms",
                ms(self.connect_timeout)
            ));
        }
        if !(1..=PUBLISH_TIMEOUT_MS_MAX).contains(&ms(self.publish_timeout)) {
            return invalid(format!(
                "publish timeout is {} ms; it must be 1 to {PUBLISH_TIMEOUT_MS_MAX} ms",
                ms(self.publish_timeout)
            ));
        }
        if !(1..=PUBLISH_CONCURRENCY_MAX).contains(&self.publish_concurrency) {
            return invalid(format!(
                "publish concurrency is {}; it must be 1 to {PUBLISH_CONCURRENCY_MAX}",
                self.publish_concurrency
            ));
        }
        if let Some(poll) = self.poll_interval {
            if !(1..=POLL_INTERVAL_MS_MAX).contains(&ms(poll)) {
                return invalid(format!("poll interval is {} ms; it must be 1 to {POLL_INTERVAL_MS_MAX} ms", ms(poll)));
            }
        }
        if ms(self.retention) > RETENTION_MS_MAX {
            return invalid(format!("retention is {} ms; the limit is {RETENTION_MS_MAX} ms", ms(self.retention)));
        }
        Ok(())
    }

    /// The backoff before the retry that follows failed attempt `attempt` (1-based): full
    /// jitter under the exponential cap.
    pub fn backoff_ms(&self, attempt: u32) -> u64 {
        let initial = self.backoff_initial.as_millis() as f64;
        let max = self.backoff_max.as_millis() as f64;
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let cap = (initial * self.backoff_multiplier.powi(exponent)).min(max);
        // `cap` is finite and within 0..=BACKOFF_MS_MAX, so the cast is exact enough.
        (rand::random::<f64>() * cap).round() as u64
    }
}

/// Checks an outbox name (the dedup-id prefix).
pub fn validate_outbox_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= OUTBOX_NAME_LEN_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(OutboxError::InvalidOptions(format!(
            "outbox name {name:?} is not valid: use 1 to {OUTBOX_NAME_LEN_MAX} (OUTBOX_NAME_LEN_MAX) characters of \
             [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

/// The crash fail point (see [`FAILPOINT_ENV`]): the probability of aborting after a publish.
fn failpoint_from_env() -> Result<Option<f64>> {
    let Ok(value) = std::env::var(FAILPOINT_ENV) else { return Ok(None) };
    let probability = value
        .strip_prefix("crash_after_publish:")
        .and_then(|p| p.parse::<f64>().ok())
        .filter(|p| (0.0..=1.0).contains(p));
    match probability {
        Some(p) => Ok(Some(p)),
        None => Err(OutboxError::InvalidOptions(format!(
            "{FAILPOINT_ENV}={value:?} is not valid: use crash_after_publish:<probability from 0 to 1>"
        ))),
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoundReport {
    /// Messages claimed.
    pub claimed: usize,
    /// Messages the sink confirmed and the relay marked sent.
    pub sent: usize,
    /// Messages that failed and will be retried after their backoff.
    pub retried: usize,
    /// Messages parked in the dead letters.
    pub parked: usize,
}

/// The outbox relay. Build it with [`Relay::postgres`] or [`Relay::sqlite`], then [`Relay::run`]
/// it until shutdown (or drive it round by round with [`Relay::run_round`]).
pub struct Relay {
    source: Box<dyn Source>,
    sink: Arc<dyn Sink>,
    options: RelayOptions,
    outbox_name: String,
    poll_interval: Duration,
    failpoint: Option<f64>,
    failures: std::sync::Mutex<FailureLog>,
}

/// How often at most the log says that publishes keep failing (with the count since it last
/// said so), rather than a line per failed publish: a sink that is down fails every message of
/// every round.
const FAILURE_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Failed publishes (to be retried) since the last warning, and when that was.
#[derive(Default)]
struct FailureLog {
    since_warned: u64,
    warned_at: Option<Instant>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("outbox", &self.describe()).field("options", &self.options).finish()
    }
}

impl Relay {
    /// A relay of the PostgreSQL outbox `outbox` in the database at `url`: connects, migrates
    /// the outbox schema and listens for staged messages. Several relays may serve one outbox.
    #[cfg(feature = "postgres")]
    pub async fn postgres(url: &str, outbox: PgOutbox, sink: Arc<dyn Sink>, options: RelayOptions) -> Result<Relay> {
        options.validate()?;
        let failpoint = failpoint_from_env()?;
        let source = PgSource::connect(url, outbox, options.connect_timeout).await?;
        Ok(Relay::build(Box::new(source), sink, options, failpoint))
    }

    /// A relay of the SQLite outbox in the application's database file at `path`: takes the
    /// file's relay lock (one relay per file; [`OutboxError::Busy`] if another holds it) and
    /// migrates the outbox tables.
    #[cfg(feature = "sqlite")]
    pub async fn sqlite(path: impl AsRef<Path>, sink: Arc<dyn Sink>, options: RelayOptions) -> Result<Relay> {
        options.validate()?;
        let failpoint = failpoint_from_env()?;
        let path = path.as_ref().to_owned();
        let source = tokio::task::spawn_blocking(move || SqliteSource::open(&path))
            .await
            .map_err(|e| OutboxError::Storage(format!("opening the SQLite outbox failed: {e}")))??;
        Ok(Relay::build(Box::new(source), sink, options, failpoint))
    }

    fn build(source: Box<dyn Source>, sink: Arc<dyn Sink>, options: RelayOptions, failpoint: Option<f64>) -> Relay {
        let outbox_name = options.outbox_name.clone().unwrap_or_else(|| source.default_outbox_name());
        let poll_interval = options.poll_interval.unwrap_or_else(|| source.default_poll_interval());
        Relay { source, sink, options, outbox_name, poll_interval, failpoint, failures: Default::default() }
    }

    /// Counts `failed` publishes to be retried, and says so in the log at most every
    /// [`FAILURE_WARNING_EVERY`], with one of the errors.
    fn warn_of_failures(&self, failed: u64, error: &str) {
        let mut log = self.failures.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        log.since_warned += failed;
        if log.warned_at.is_some_and(|at| at.elapsed() < FAILURE_WARNING_EVERY) {
            return;
        }
        tracing::warn!(
            failed = log.since_warned,
            sink = self.sink.kind(),
            %error,
            "publishes are failing; each is retried with backoff until it is parked \
             (onceq_outbox_publish_failures_total counts them)"
        );
        log.since_warned = 0;
        log.warned_at = Some(Instant::now());
    }

    /// `outbox <where> → sink <kind>`, for logs and the CLI's startup line (never a password).
    pub fn describe(&self) -> String {
        format!("outbox {} (name {}) → sink {}", self.source.describe(), self.outbox_name, self.sink.kind())
    }

    /// The dedup-id prefix in use.
    pub fn outbox_name(&self) -> &str {
        &self.outbox_name
    }

    /// What the outbox holds now (pending, oldest pending age, parked).
    pub async fn backlog(&self) -> Result<Backlog> {
        self.source.backlog().await
    }

    /// Reads the backlog and sets the gauges ([`names::PENDING`], [`names::LAG`],
    /// [`names::PARKED_NOW`]).
    pub async fn update_gauges(&self) -> Result<Backlog> {
        let backlog = self.source.backlog().await?;
        let outbox = self.outbox_name.clone();
        metrics::gauge!(names::PENDING, "outbox" => outbox.clone()).set(backlog.pending as f64);
        metrics::gauge!(names::LAG, "outbox" => outbox.clone())
            .set(backlog.oldest_pending_age_ms.unwrap_or(0) as f64 / 1000.0);
        metrics::gauge!(names::PARKED_NOW, "outbox" => outbox).set(backlog.parked as f64);
        Ok(backlog)
    }

    /// Deletes sent messages past the retention; returns how many.
    pub async fn purge_sent(&self) -> Result<u64> {
        self.source.purge_sent(u64::try_from(self.options.retention.as_millis()).unwrap_or(u64::MAX)).await
    }

    /// One round (see the module docs): claim, publish, settle.
    pub async fn run_round(&self) -> Result<RoundReport> {
        let claim = self.source.claim(self.options.batch_size).await?;
        let messages: Vec<OutboxMessage> = claim.messages().to_vec();
        if messages.is_empty() {
            return Ok(RoundReport::default());
        }
        let results = self.publish_all(messages.clone()).await;
        let mut report = RoundReport { claimed: messages.len(), ..RoundReport::default() };
        let mut outcomes = Vec::with_capacity(messages.len());
        let mut parked_reasons = Vec::new();
        let mut first_failure: Option<String> = None;
        let sink = self.sink.kind();
        for (message, result) in messages.iter().zip(results) {
            let outcome = match result {
                Ok(()) => {
                    report.sent += 1;
                    Outcome::Sent
                }
                Err(PublishError::Permanent(error)) => {
                    tracing::warn!(id = message.id, destination = %message.destination, %error, "publish refused for good; parking");
                    report.parked += 1;
                    parked_reasons.push("permanent");
                    Outcome::Park { error: format!("permanent failure on attempt {}: {error}", message.attempt) }
                }
                Err(PublishError::Transient(error)) if message.attempt >= self.options.max_attempts => {
                    tracing::warn!(id = message.id, destination = %message.destination, %error, attempts = message.attempt, "publish attempts exhausted; parking");
                    report.parked += 1;
                    parked_reasons.push("attempts_exhausted");
                    Outcome::Park { error: format!("attempts exhausted ({}): {error}", message.attempt) }
                }
                Err(PublishError::Transient(error)) => {
                    let delay_ms = self.options.backoff_ms(message.attempt);
                    tracing::debug!(id = message.id, %error, attempt = message.attempt, delay_ms, "publish failed; retrying later");
                    first_failure.get_or_insert_with(|| error.to_string());
                    report.retried += 1;
                    Outcome::Retry { delay_ms, error }
                }
            };
            outcomes.push((message.id, outcome));
        }
        if let Some(error) = first_failure {
            self.warn_of_failures(report.retried as u64, &error);
        }
        claim.settle(outcomes, self.options.retention.is_zero()).await?;
        for reason in parked_reasons {
            metrics::counter!(names::PARKED, "outbox" => self.outbox_name.clone(), "sink" => sink, "reason" => reason)
                .increment(1);
        }
        Ok(report)
    }

    /// Publishes `messages` (at most `publish_concurrency` at once); results in their order.
    async fn publish_all(&self, messages: Vec<OutboxMessage>) -> Vec<Result<(), PublishError>> {
        let permits = Arc::new(Semaphore::new(self.options.publish_concurrency));
        let mut tasks = Vec::with_capacity(messages.len());
        for message in messages {
            let (sink, permits, outbox) = (self.sink.clone(), permits.clone(), self.outbox_name.clone());
            let (timeout, failpoint) = (self.options.publish_timeout, self.failpoint);
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                publish_one(&*sink, &message, &outbox, timeout, failpoint).await
            }));
        }
        let mut results = Vec::with_capacity(tasks.len());
        for task in tasks {
            results.push(match task.await {
                Ok(result) => result,
                Err(e) => Err(PublishError::Transient(format!("the publish task failed: {e}"))),
            });
        }
        results
    }

    /// Runs rounds until `shutdown` completes, then finishes the round in flight (its
    /// publishes end within the publish timeout) and returns. Database failures are logged and
    /// retried with a pause; only a failure to start is returned as an error.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let purge_every = self.options.retention.clamp(Duration::from_secs(1), PURGE_EVERY_MAX);
        let mut last_purge: Option<Instant> = None;
        let mut last_gauges: Option<Instant> = None;
        let mut error_pause_ms = ERROR_PAUSE_MS.0;
        tracing::info!(relay = %self.describe(), "relay running");
        // Whether the relay's sleeping registration stands (see `Source::prepare_sleep`), and
        // whether the next empty round is the look that follows a fresh registration.
        let (mut registered, mut looking) = (false, false);
        while !*stop.borrow() {
            let wait = match self.run_round().await {
                Ok(report) if report.claimed > 0 => {
                    error_pause_ms = ERROR_PAUSE_MS.0;
                    looking = false;
                    if registered {
                        registered = false;
                        if let Err(error) = self.source.awake().await {
                            tracing::debug!(%error, "withdrawing the sleeping registration failed");
                        }
                    }
                    Duration::ZERO
                }
                Ok(_) => {
                    error_pause_ms = ERROR_PAUSE_MS.0;
                    let wait = match self.source.next_due_ms().await {
                        Ok(Some(ms)) => Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(self.poll_interval),
                        Ok(None) => self.poll_interval,
                        Err(error) => {
                            tracing::warn!(%error, "reading the next due time failed");
                            self.poll_interval
                        }
                    };
                    if wait.is_zero() {
                        wait
                    } else if looking {
                        // Registered, and nothing was found in the round that followed: sleep.
                        looking = false;
                        wait
                    } else {
                        match self.source.prepare_sleep(wait).await {
                            // Registered: look once more (the next round), then sleep.
                            Ok(true) => {
                                (registered, looking) = (true, true);
                                Duration::ZERO
                            }
                            // A staging transaction that may have missed the registration is
                            // still open: look again (prepare_sleep already paused).
                            Ok(false) => Duration::ZERO,
                            Err(error) => {
                                tracing::warn!(%error, "registering the relay as sleeping failed");
                                wait
                            }
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, pause_ms = error_pause_ms, "relay round failed; pausing");
                    let pause = Duration::from_millis(error_pause_ms);
                    error_pause_ms = (error_pause_ms * 2).min(ERROR_PAUSE_MS.1);
                    pause
                }
            };
            if last_gauges.is_none_or(|t| t.elapsed() >= GAUGES_EVERY) {
                last_gauges = Some(Instant::now());
                if let Err(error) = self.update_gauges().await {
                    tracing::debug!(%error, "reading the outbox backlog failed");
                }
            }
            if last_purge.is_none_or(|t| t.elapsed() >= purge_every) {
                last_purge = Some(Instant::now());
                match self.purge_sent().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(deleted = n, "deleted sent outbox messages past their retention"),
                    Err(error) => tracing::warn!(%error, "deleting sent outbox messages failed"),
                }
            }
            if !wait.is_zero() {
                tokio::select! {
                    () = self.source.wait(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        watcher.abort();
        self.source.close().await;
        tracing::info!("relay stopped");
        Ok(())
    }

    /// Runs rounds until one claims nothing: everything due has been published, retried or
    /// parked. For tests, benchmarks and one-shot jobs.
    pub async fn run_until_idle(&self) -> Result<RoundReport> {
        let mut total = RoundReport::default();
        loop {
            let report = self.run_round().await?;
            if report.claimed == 0 {
                return Ok(total);
            }
            total.claimed += report.claimed;
            total.sent += report.sent;
            total.retried += report.retried;
            total.parked += report.parked;
        }
    }

    /// Releases the relay's connections (and on SQLite, when dropped, its lock).
    pub async fn close(self) {
        self.source.close().await;
    }
}

/// Publishes one message within `timeout`, counting the outcome; aborts the process after a
/// confirmed publish when the fail point says so.
async fn publish_one(
    sink: &dyn Sink,
    message: &OutboxMessage,
    outbox: &str,
    timeout: Duration,
    failpoint: Option<f64>,
) -> Result<(), PublishError> {
    let dedup_id = message.dedup_id(outbox);
    let kind = sink.kind();
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, sink.publish(message, &dedup_id)).await {
        Ok(result) => result,
        Err(_) => Err(PublishError::Transient(format!("the {kind} sink did not confirm within {timeout:?}"))),
    };
    metrics::histogram!(names::PUBLISH_DURATION, "outbox" => outbox.to_owned(), "sink" => kind)
        .record(started.elapsed().as_secs_f64());
    match &result {
        Ok(()) => {
            metrics::counter!(names::PUBLISHED, "outbox" => outbox.to_owned(), "sink" => kind).increment(1);
            if let Some(p) = failpoint {
                if rand::random::<f64>() < p {
                    eprintln!("onceq relay: fail point crash_after_publish hit after publishing {dedup_id}; aborting");
                    std::process::abort();
                }
            }
        }
        Err(error) => {
            let failure = if matches!(error, PublishError::Permanent(_)) { "permanent" } else { "transient" };
            metrics::counter!(names::PUBLISH_FAILURES, "outbox" => outbox.to_owned(), "sink" => kind, "kind" => failure)
                .increment(1);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_an_exponential_cap() {
        let options = RelayOptions {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1_000),
            ..RelayOptions::default()
        };
        for (attempt, cap) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_000), (50, 1_000), (u32::MAX, 1_000)] {
            let delays: Vec<u64> = (0..200).map(|_| options.backoff_ms(attempt)).collect();
            assert!(delays.iter().all(|&d| d <= cap), "attempt {attempt}: {delays:?} over {cap}");
            let spread = delays.iter().max().copied().unwrap_or(0) - delays.iter().min().copied().unwrap_or(0);
            assert!(spread > cap / 2, "attempt {attempt}: jitter spread {spread} too small for cap {cap}");
        }
    }

    #[test]
    fn options_past_their_bounds_are_refused_with_their_bound() {
        assert_eq!(RelayOptions::default().validate(), Ok(()));
        let cases = [
            (RelayOptions { batch_size: 0, ..RelayOptions::default() }, "batch size"),
            (RelayOptions { batch_size: BATCH_SIZE_MAX + 1, ..RelayOptions::default() }, "batch size"),
            (RelayOptions { max_attempts: 0, ..RelayOptions::default() }, "max attempts"),
            (RelayOptions { backoff_initial: Duration::ZERO, ..RelayOptions::default() }, "backoff"),
            (RelayOptions { backoff_max: Duration::from_millis(1), ..RelayOptions::default() }, "backoff"),
            (RelayOptions { backoff_multiplier: 0.5, ..RelayOptions::default() }, "multiplier"),
            (RelayOptions { backoff_multiplier: f64::NAN, ..RelayOptions::default() }, "multiplier"),
            (RelayOptions { publish_timeout: Duration::ZERO, ..RelayOptions::default() }, "publish timeout"),
            (RelayOptions { connect_timeout: Duration::ZERO, ..RelayOptions::default() }, "connect timeout"),
            (RelayOptions { publish_concurrency: 0, ..RelayOptions::default() }, "publish concurrency"),
            (RelayOptions { poll_interval: Some(Duration::ZERO), ..RelayOptions::default() }, "poll interval"),
            (RelayOptions { retention: Duration::from_secs(31 * 86_400), ..RelayOptions::default() }, "retention"),
            (RelayOptions { outbox_name: Some("a b".into()), ..RelayOptions::default() }, "OUTBOX_NAME_LEN_MAX"),
        ];
        for (options, named) in cases {
            match options.validate() {
                Err(OutboxError::InvalidOptions(text)) => assert!(text.contains(named), "{text} should name {named}"),
                other => panic!("{options:?} gave {other:?}"),
            }
        }
    }
}
