//! Schedules: a cron expression in a time zone, each of whose ticks enqueues exactly one job
//! (Invariant 14).
//!
//! This module owns everything about a schedule that needs no storage: its name, its spec, what
//! a read returns, and the pure tick computation ([`Cron`], [`Cron::plan`]). Every store fires
//! ticks the same way: it locks the schedule's row, asks [`Cron::plan`] what is due as of its
//! one clock (Invariant 7), enqueues each fired tick's job with the dedup id
//! [`tick_dedup_id`], and advances the row's `next_tick` in the same transaction. A tick at or
//! before the stored `next_tick` minus one is never planned again, so a clock that jumps back, a
//! restart, or a second server fires nothing twice; and the dedup id makes a second enqueue of
//! the same tick a duplicate even if two stores raced past the lock.
//!
//! # Cron and time zones
//!
//! Patterns are parsed and walked by the `croner` crate: 5 fields (minute precision) or 6 (the
//! first is seconds); `@hourly`-style nicknames; `L`, `W`, `#`. Time zones are IANA names from
//! the `chrono-tz` database. The rule across daylight-saving changes (docs/design.md,
//! "Schedules"): the pattern names local wall-clock times; a wall-clock time that does not
//! exist that day (the hour skipped when clocks go forward) fires nothing; a wall-clock time
//! that happens twice (the hour repeated when clocks go back) fires once, at its first instant.
//!
//! # Catch-up
//!
//! A due tick that the store fires within [`SCHEDULE_TICK_GRACE_MS`] of its time is on time and
//! always fires. Due ticks older than that were missed (the store was down, or the schedule was
//! not looked at): [`CatchUp`] says which of them fire.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::limits::*;
use crate::{Error, Headers, JobId, NewJob, QueueName, Result, Timestamp};

/// A validated schedule name: 1 to [`SCHEDULE_NAME_LEN_MAX`] characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String))]
pub struct ScheduleName(String);

impl ScheduleName {
    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::invalid(format!(
                "schedule name is empty; use 1-{SCHEDULE_NAME_LEN_MAX} characters of [A-Za-z0-9._-]"
            )));
        }
        if name.len() > SCHEDULE_NAME_LEN_MAX {
            return Err(Error::invalid(format!(
                "schedule name is {} bytes long; the limit is {SCHEDULE_NAME_LEN_MAX}",
                name.len()
            )));
        }
        if name.chars().all(|c| c == '.') {
            // "." and ".." cannot travel in a URL path.
            return Err(Error::invalid(format!("schedule name {name:?} is only dots; add a letter or digit")));
        }
        if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(Error::invalid(format!(
                "schedule name {name:?} contains {bad:?}; only [A-Za-z0-9._-] is allowed"
            )));
        }
        Ok(ScheduleName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ScheduleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ScheduleName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ScheduleName::new(s)
    }
}

impl<'de> Deserialize<'de> for ScheduleName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        ScheduleName::new(raw).map_err(|e| serde::de::Error::custom(e.detail()))
    }
}

/// The dedup id of the job of `name`'s tick at `tick`: `schedule:<name>:<tick unix ms>`.
pub fn tick_dedup_id(name: &ScheduleName, tick: Timestamp) -> String {
    format!("schedule:{}:{}", name, tick.as_millis())
}

const _: () = assert!("schedule:".len() + SCHEDULE_NAME_LEN_MAX + ":".len() + 20 <= DEDUP_ID_LEN_MAX);

/// Which missed ticks fire when a schedule was not looked at for a while (the store was down).
/// A tick is missed when it is fired more than [`SCHEDULE_TICK_GRACE_MS`] after its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CatchUp {
    /// No missed tick fires; the schedule goes on with its next tick.
    Skip,
    /// One job stands for every missed tick: the latest missed tick fires, unless an on-time
    /// tick fires in the same pass. The default: a periodic job (a report, a cleanup, a sync)
    /// usually covers "everything since last time", so one late run does the missed work, where
    /// `skip` would drop it silently and `all` would run it many times over.
    #[default]
    One,
    /// Every missed tick fires, oldest first, at most [`SCHEDULE_CATCH_UP_MAX`] of them: the
    /// latest ones; older missed ticks are skipped (and counted as skipped).
    All,
}

impl CatchUp {
    /// The name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::One => "one",
            CatchUp::All => "all",
        }
    }
}

impl FromStr for CatchUp {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "skip" => Ok(CatchUp::Skip),
            "one" => Ok(CatchUp::One),
            "all" => Ok(CatchUp::All),
            other => Err(Error::invalid(format!("catch_up is {other:?}; use skip, one or all"))),
        }
    }
}

/// The fields of each tick's job besides its payload, as in an enqueue.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobTemplate {
    /// Higher runs first; between [`PRIORITY_MIN`] and [`PRIORITY_MAX`].
    #[serde(default)]
    pub priority: i32,
    /// String headers.
    #[serde(default, skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// Overrides the queue's `max_attempts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Ordering key of every tick's job (in a `per_key` queue, ticks then run one at a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
}

/// What a schedule is: which queue gets a job, on which cron ticks, in which time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// The queue each tick's job goes to; created with defaults by the first tick if needed,
    /// as an enqueue would.
    pub queue: QueueName,
    /// The cron expression: 5 fields, or 6 with seconds first.
    pub cron: String,
    /// IANA time zone the expression is read in (default `UTC`).
    pub timezone: String,
    /// Each tick's job payload (bytes; JSON `null` by default).
    pub payload: Vec<u8>,
    /// Each tick's job fields.
    pub job: JobTemplate,
    /// What fires after downtime.
    pub catch_up: CatchUp,
    /// A paused schedule fires nothing; its ticks while paused are not caught up.
    pub paused: bool,
}

impl ScheduleSpec {
    /// A spec firing `cron` (UTC) into `queue` with a `null` payload and every other field at
    /// its default.
    pub fn new(queue: QueueName, cron: impl Into<String>) -> Self {
        ScheduleSpec {
            queue,
            cron: cron.into(),
            timezone: "UTC".to_owned(),
            payload: b"null".to_vec(),
            job: JobTemplate::default(),
            catch_up: CatchUp::default(),
            paused: false,
        }
    }

    /// Checks every field (the cron expression parses and fires at least once, the time zone is
    /// known, the job's fields are within their limits); returns the compiled expression.
    pub fn validate(&self) -> Result<Cron> {
        let cron = Cron::new(&self.cron, &self.timezone)?;
        self.job_for(Timestamp::default(), &ScheduleName(String::from("x"))).validate().map_err(|e| match e {
            Error::InvalidRequest(m) => Error::invalid(format!("job: {m}")),
            other => other,
        })?;
        Ok(cron)
    }

    /// The job of the tick at `tick`, with its dedup id.
    pub fn job_for(&self, tick: Timestamp, name: &ScheduleName) -> NewJob {
        NewJob {
            payload: self.payload.clone(),
            headers: self.job.headers.clone(),
            priority: self.job.priority,
            schedule: crate::Schedule::Now,
            max_attempts: self.job.max_attempts,
            dedup_id: Some(tick_dedup_id(name, tick)),
            ordering_key: self.job.ordering_key.clone(),
            unique: None,
        }
    }

    /// Whether `other` fires on other ticks than this one (cron or time zone changed).
    pub fn ticks_differ(&self, other: &ScheduleSpec) -> bool {
        self.cron != other.cron || self.timezone != other.timezone
    }

    /// The spec as a store keeps it (JSON text).
    pub fn to_stored(&self) -> String {
        let stored = StoredSpec {
            queue: self.queue.clone(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            payload_base64: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &self.payload),
            job: self.job.clone(),
            catch_up: self.catch_up,
        };
        // A struct of strings, numbers and maps of strings always serializes.
        serde_json::to_string(&stored).unwrap_or_default()
    }

    /// A spec a store kept ([`ScheduleSpec::to_stored`]), with its paused flag (kept beside it).
    pub fn from_stored(text: &str, paused: bool) -> Result<Self> {
        let stored: StoredSpec =
            serde_json::from_str(text).map_err(|e| Error::Storage(format!("a stored schedule is unreadable: {e}")))?;
        let payload = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &stored.payload_base64)
            .map_err(|e| Error::Storage(format!("a stored schedule's payload is unreadable: {e}")))?;
        Ok(ScheduleSpec {
            queue: stored.queue,
            cron: stored.cron,
            timezone: stored.timezone,
            payload,
            job: stored.job,
            catch_up: stored.catch_up,
            paused,
        })
    }
}

/// [`ScheduleSpec`] as stored, without the paused flag (a column of its own, which the firing
/// pass filters on).
#[derive(Serialize, Deserialize)]
struct StoredSpec {
    queue: QueueName,
    cron: String,
    timezone: String,
    payload_base64: String,
    job: JobTemplate,
    catch_up: CatchUp,
}

/// A schedule as a store keeps it: its spec and where its ticks stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleInfo {
    /// The name.
    pub name: ScheduleName,
    /// The spec.
    pub spec: ScheduleSpec,
    /// The next tick that fires (none while paused: resuming picks the next tick after "now").
    pub next_tick: Option<Timestamp>,
    /// The next [`SCHEDULE_NEXT_TICKS_SHOWN`] ticks from `next_tick` on (while paused: those
    /// after the later of now and the last tick, which is what resuming now would fire).
    pub next_ticks: Vec<Timestamp>,
    /// The latest tick that fired a job.
    pub last_tick: Option<Timestamp>,
    /// The job of `last_tick`.
    pub last_job_id: Option<JobId>,
}

impl ScheduleInfo {
    /// Reads a stored row: the spec, and where its ticks stand, at `now`.
    pub fn from_row(
        name: ScheduleName,
        spec: ScheduleSpec,
        next_tick: Option<Timestamp>,
        last_tick: Option<Timestamp>,
        last_job_id: Option<JobId>,
        now: Timestamp,
    ) -> Self {
        let next_ticks = match Cron::new(&spec.cron, &spec.timezone) {
            Ok(cron) => match (spec.paused, next_tick) {
                (false, Some(next)) => cron.ticks_from(next, SCHEDULE_NEXT_TICKS_SHOWN),
                _ => {
                    let after = last_tick.map_or(now, |t| t.max(now));
                    cron.next_after(after).map_or_else(Vec::new, |t| cron.ticks_from(t, SCHEDULE_NEXT_TICKS_SHOWN))
                }
            },
            Err(_) => Vec::new(),
        };
        ScheduleInfo {
            name,
            next_tick: if spec.paused { None } else { next_tick },
            spec,
            next_ticks,
            last_tick,
            last_job_id,
        }
    }
}

/// One tick a firing pass fired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FiredTick {
    /// The schedule.
    pub schedule: ScheduleName,
    /// The tick's time.
    #[serde(with = "crate::api::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub tick: Timestamp,
    /// Its job.
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub job_id: JobId,
    /// Whether the job already existed (the tick's dedup id was seen within the queue's dedup
    /// window): nothing new was enqueued.
    pub duplicate: bool,
}

/// What a firing pass over every due schedule did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TickReport {
    /// The ticks fired, by schedule name, each schedule's oldest first.
    pub fired: Vec<FiredTick>,
    /// Missed ticks that did not fire (catch-up policy, or past [`SCHEDULE_CATCH_UP_MAX`]).
    pub skipped: u64,
}

/// What one schedule's firing pass does at `now` ([`Cron::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickPlan {
    /// Ticks to fire, oldest first.
    pub fire: Vec<Timestamp>,
    /// Missed ticks that do not fire (at most [`SCHEDULE_TICK_SCAN_MAX`] are counted).
    pub skipped: u64,
    /// The schedule's next tick after `now`; `None` if it never fires again.
    pub next_tick: Option<Timestamp>,
}

/// Most candidate instants a search for one tick looks at before it gives up: a pattern that
/// matches only in a skipped hour, or only the second pass of a repeated one, is walked past
/// candidate by candidate (at most an hour of per-second candidates).
const CANDIDATES_MAX: usize = 8 * 3600;

/// A parsed cron expression in its time zone: the pure tick computation.
#[derive(Debug, Clone)]
pub struct Cron {
    cron: croner::Cron,
    tz: Tz,
}

impl Cron {
    /// Parses `expression` (5 fields, or 6 with seconds first) in the IANA zone `timezone`.
    /// Errors name the field: `cron: ...` or `timezone: ...`.
    pub fn new(expression: &str, timezone: &str) -> Result<Self> {
        if expression.len() > SCHEDULE_CRON_LEN_MAX {
            return Err(Error::invalid(format!(
                "cron: the expression is {} bytes; the limit is {SCHEDULE_CRON_LEN_MAX}",
                expression.len()
            )));
        }
        let fields = expression.split_whitespace().count();
        if !expression.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(Error::invalid(format!(
                "cron: {expression:?} has {fields} fields; use 5 (minute hour day-of-month month day-of-week) \
                 or 6 (seconds first)"
            )));
        }
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        let cron = parser
            .parse(expression)
            .map_err(|e| Error::invalid(format!("cron: {expression:?} is not a cron expression: {e}")))?;
        let tz: Tz = timezone.parse().map_err(|_| {
            Error::invalid(format!("timezone: {timezone:?} is not an IANA time zone name (e.g. Europe/Berlin, UTC)"))
        })?;
        let parsed = Cron { cron, tz };
        // Without a year field every pattern repeats at least yearly (leap days every four
        // years), so one that fires after the epoch fires forever.
        if parsed.next_after(Timestamp::from_millis(0)).is_none() {
            return Err(Error::invalid(format!("cron: {expression:?} never fires")));
        }
        Ok(parsed)
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let mut cursor = self.to_local(floor_second(t))?;
        for _ in 0..CANDIDATES_MAX {
            let candidate = self.cron.find_next_occurrence(&cursor, false).ok()?;
            if self.is_tick(&candidate) {
                let tick = Timestamp::from_millis(candidate.timestamp_millis());
                debug_assert!(tick > t);
                return Some(tick);
            }
            cursor = candidate;
        }
        None
    }

    /// The last tick strictly before `t`.
    pub fn prev_before(&self, t: Timestamp) -> Option<Timestamp> {
        let floor = floor_second(t);
        let mut cursor = self.to_local(floor)?;
        let mut inclusive = floor < t;
        for _ in 0..CANDIDATES_MAX {
            let candidate = self.cron.find_previous_occurrence(&cursor, inclusive).ok()?;
            if self.is_tick(&candidate) {
                let tick = Timestamp::from_millis(candidate.timestamp_millis());
                debug_assert!(tick < t);
                return Some(tick);
            }
            cursor = candidate;
            inclusive = false;
        }
        None
    }

    /// Up to `count` ticks from `from` on (`from` itself if it is a tick).
    pub fn ticks_from(&self, from: Timestamp, count: usize) -> Vec<Timestamp> {
        let mut ticks = Vec::with_capacity(count);
        let mut after = Timestamp::from_millis(from.as_millis().saturating_sub(1));
        while ticks.len() < count {
            match self.next_after(after) {
                Some(t) => {
                    ticks.push(t);
                    after = t;
                }
                None => break,
            }
        }
        ticks
    }

    /// What a firing pass at `now` does for a schedule whose first unfired tick is `next_tick`.
    ///
    /// Every tick in `[next_tick, now]` is due. Those within [`SCHEDULE_TICK_GRACE_MS`] of `now`
    /// are on time and fire; older ones were missed and fire as `catch_up` says. The result's
    /// `next_tick` is the first tick after `now`, so a later pass never plans these again.
    pub fn plan(&self, next_tick: Timestamp, now: Timestamp, catch_up: CatchUp) -> TickPlan {
        let upcoming = self.next_after(now);
        if next_tick > now {
            // Nothing due (or the clock went back): keep the stored next tick, never an earlier one.
            return TickPlan { fire: Vec::new(), skipped: 0, next_tick: Some(next_tick) };
        }
        let on_time_from =
            Timestamp::from_millis(now.as_millis().saturating_sub(to_i64(SCHEDULE_TICK_GRACE_MS))).max(next_tick);
        let mut on_time = Vec::new();
        let mut at = on_time_from;
        let mut candidate = if self.is_tick_at(at) { Some(at) } else { self.next_after(at) };
        while let Some(t) = candidate.filter(|t| *t <= now) {
            on_time.push(t);
            at = t;
            candidate = self.next_after(at);
        }
        // Missed ticks: in [next_tick, on_time_from), newest first.
        let wanted = match catch_up {
            CatchUp::Skip => 0,
            CatchUp::One if on_time.is_empty() => 1,
            CatchUp::One => 0,
            CatchUp::All => SCHEDULE_CATCH_UP_MAX,
        };
        let mut missed_fired = Vec::new();
        let mut before = on_time_from;
        while missed_fired.len() < wanted {
            match self.prev_before(before).filter(|t| *t >= next_tick) {
                Some(t) => {
                    missed_fired.push(t);
                    before = t;
                }
                None => break,
            }
        }
        // Count what is left in [next_tick, before): skipped.
        let mut skipped = 0u64;
        let mut cursor = if self.is_tick_at(next_tick) { Some(next_tick) } else { self.next_after(next_tick) };
        while let Some(t) = cursor.filter(|t| *t < before) {
            skipped += 1;
            if skipped >= SCHEDULE_TICK_SCAN_MAX {
                break;
            }
            cursor = self.next_after(t);
        }
        missed_fired.reverse();
        missed_fired.extend(on_time);
        debug_assert!(missed_fired.windows(2).all(|w| w[0] < w[1]));
        debug_assert!(missed_fired.iter().all(|t| *t >= next_tick && *t <= now));
        TickPlan { fire: missed_fired, skipped, next_tick: upcoming }
    }

    /// Whether `t` itself is a tick.
    fn is_tick_at(&self, t: Timestamp) -> bool {
        t.as_millis() % 1000 == 0 && self.to_local(t).is_some_and(|local| self.is_tick(&local))
    }

    /// Whether an instant croner found is a tick by the DST rule: its wall-clock time matches
    /// the pattern (croner moves a fixed time that falls in a skipped hour to the hour's end:
    /// that instant's wall clock does not match, so it is no tick), and it is the first of the
    /// instants that show that wall-clock time (the second pass of a repeated hour is no tick).
    fn is_tick(&self, instant: &DateTime<Tz>) -> bool {
        if !self.cron.is_time_matching(instant).unwrap_or(false) {
            return false;
        }
        match self.tz.from_local_datetime(&instant.naive_local()) {
            LocalResult::Single(_) => true,
            LocalResult::Ambiguous(first, _) => first == *instant,
            LocalResult::None => false,
        }
    }

    fn to_local(&self, t: Timestamp) -> Option<DateTime<Tz>> {
        Utc.timestamp_millis_opt(t.as_millis()).single().map(|utc| utc.with_timezone(&self.tz))
    }
}

/// `t` rounded down to a whole second.
fn floor_second(t: Timestamp) -> Timestamp {
    Timestamp::from_millis(t.as_millis().div_euclid(1000) * 1000)
}

fn to_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Records the metrics of one schedule's firing pass at `now`.
pub fn record(name: &ScheduleName, plan: &TickPlan, fired: &[FiredTick], now: Timestamp) {
    use crate::metrics as names;
    let enqueued = fired.iter().filter(|f| !f.duplicate).count();
    metrics::counter!(names::SCHEDULE_TICKS_ENQUEUED, "schedule" => name.as_str().to_owned())
        .increment(u64::try_from(enqueued).unwrap_or(u64::MAX));
    if plan.skipped > 0 {
        metrics::counter!(names::SCHEDULE_TICKS_SKIPPED, "schedule" => name.as_str().to_owned())
            .increment(plan.skipped);
    }
    for tick in &plan.fire {
        #[allow(clippy::cast_precision_loss)]
        let late = now.ms_since(*tick) as f64 / 1000.0;
        metrics::histogram!(names::SCHEDULE_TICK_LATENESS, "schedule" => name.as_str().to_owned()).record(late);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The instant of a UTC wall-clock time.
    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Timestamp {
        Timestamp::from_millis(Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap().timestamp_millis())
    }

    /// Every tick in `(from, to]`.
    fn ticks_between(cron: &Cron, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut at = from;
        while let Some(t) = cron.next_after(at).filter(|t| *t <= to) {
            out.push(t);
            at = t;
        }
        out
    }

    #[test]
    fn names_are_validated() {
        assert_eq!(ScheduleName::new("nightly.report_v2-eu").unwrap().as_str(), "nightly.report_v2-eu");
        assert!(ScheduleName::new("").is_err());
        assert!(ScheduleName::new("a b").is_err());
        assert!(ScheduleName::new("..").is_err());
        assert!(ScheduleName::new("x".repeat(SCHEDULE_NAME_LEN_MAX)).is_ok());
        assert!(ScheduleName::new("x".repeat(SCHEDULE_NAME_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn bad_cron_and_timezone_name_their_field() {
        let err = |e: Error| e.detail();
        assert!(err(Cron::new("not cron", "UTC").unwrap_err()).starts_with("cron: "));
        assert!(err(Cron::new("61 * * * *", "UTC").unwrap_err()).starts_with("cron: "));
        assert!(err(Cron::new("* * * *", "UTC").unwrap_err()).starts_with("cron: "));
        assert!(err(Cron::new("0 0 0 1 1 * 2030", "UTC").unwrap_err()).starts_with("cron: "));
        assert!(err(Cron::new("0 0 30 2 *", "UTC").unwrap_err()).contains("never fires"));
        assert!(err(Cron::new("* * * * *", "Mars/Olympus").unwrap_err()).starts_with("timezone: "));
        assert!(Cron::new("*/5 * * * * *", "Europe/Berlin").is_ok());
        assert!(Cron::new("@hourly", "America/New_York").is_ok());
    }

    #[test]
    fn five_fields_tick_on_minutes_six_on_seconds() {
        let start = utc(2026, 1, 1, 0, 0, 0);
        let minutes = Cron::new("*/15 * * * *", "UTC").unwrap();
        assert_eq!(
            ticks_between(&minutes, start, utc(2026, 1, 1, 1, 0, 0)),
            vec![
                utc(2026, 1, 1, 0, 15, 0),
                utc(2026, 1, 1, 0, 30, 0),
                utc(2026, 1, 1, 0, 45, 0),
                utc(2026, 1, 1, 1, 0, 0)
            ]
        );
        let seconds = Cron::new("*/20 * * * * *", "UTC").unwrap();
        assert_eq!(
            ticks_between(&seconds, start, utc(2026, 1, 1, 0, 1, 0)),
            vec![utc(2026, 1, 1, 0, 0, 20), utc(2026, 1, 1, 0, 0, 40), utc(2026, 1, 1, 0, 1, 0)]
        );
        // Strictly after, also from within a second.
        assert_eq!(
            seconds.next_after(Timestamp::from_millis(start.as_millis() + 20_500)),
            Some(utc(2026, 1, 1, 0, 0, 40))
        );
        assert_eq!(
            seconds.prev_before(Timestamp::from_millis(start.as_millis() + 20_500)),
            Some(utc(2026, 1, 1, 0, 0, 20))
        );
        assert_eq!(seconds.prev_before(utc(2026, 1, 1, 0, 0, 20)), Some(start));
    }

    // Berlin: 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC); 2026-10-25 03:00 CEST -> 02:00 CET
    // (01:00 UTC). New York: 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC); 2026-11-01 02:00
    // EDT -> 01:00 EST (06:00 UTC).

    #[test]
    fn dst_forward_a_skipped_time_fires_nothing_berlin() {
        let daily = Cron::new("30 2 * * *", "Europe/Berlin").unwrap();
        // 02:30 on the 28th (CET, 01:30 UTC), none on the 29th, 02:30 CEST on the 30th (00:30 UTC).
        assert_eq!(
            ticks_between(&daily, utc(2026, 3, 27, 12, 0, 0), utc(2026, 3, 30, 12, 0, 0)),
            vec![utc(2026, 3, 28, 1, 30, 0), utc(2026, 3, 30, 0, 30, 0)]
        );
        let every_15 = Cron::new("*/15 * * * *", "Europe/Berlin").unwrap();
        // 01:45 CET (00:45 UTC), then 03:00 CEST (01:00 UTC): the 02:xx times do not exist.
        assert_eq!(
            ticks_between(&every_15, utc(2026, 3, 29, 0, 30, 0), utc(2026, 3, 29, 1, 15, 0)),
            vec![utc(2026, 3, 29, 0, 45, 0), utc(2026, 3, 29, 1, 0, 0), utc(2026, 3, 29, 1, 15, 0)]
        );
    }

    #[test]
    fn dst_back_a_repeated_time_fires_once_berlin() {
        let daily = Cron::new("30 2 * * *", "Europe/Berlin").unwrap();
        // 02:30 happens twice on the 25th: fires at the first (CEST, 00:30 UTC) only.
        assert_eq!(
            ticks_between(&daily, utc(2026, 10, 24, 12, 0, 0), utc(2026, 10, 26, 12, 0, 0)),
            vec![utc(2026, 10, 25, 0, 30, 0), utc(2026, 10, 26, 1, 30, 0)]
        );
        let hourly = Cron::new("0 * * * *", "Europe/Berlin").unwrap();
        // 02:00 CEST (00:00 UTC), not 02:00 CET (01:00 UTC), then 03:00 CET (02:00 UTC).
        assert_eq!(
            ticks_between(&hourly, utc(2026, 10, 24, 22, 30, 0), utc(2026, 10, 25, 2, 0, 0)),
            vec![utc(2026, 10, 24, 23, 0, 0), utc(2026, 10, 25, 0, 0, 0), utc(2026, 10, 25, 2, 0, 0)]
        );
        // From inside the second pass, the next tick is after it, never back in the first.
        assert_eq!(hourly.next_after(utc(2026, 10, 25, 1, 10, 0)), Some(utc(2026, 10, 25, 2, 0, 0)));
        assert_eq!(hourly.prev_before(utc(2026, 10, 25, 1, 50, 0)), Some(utc(2026, 10, 25, 0, 0, 0)));
    }

    #[test]
    fn dst_forward_a_skipped_time_fires_nothing_new_york() {
        let daily = Cron::new("30 2 * * *", "America/New_York").unwrap();
        // 02:30 EST on the 7th (07:30 UTC), none on the 8th, 02:30 EDT on the 9th (06:30 UTC).
        assert_eq!(
            ticks_between(&daily, utc(2026, 3, 7, 0, 0, 0), utc(2026, 3, 9, 12, 0, 0)),
            vec![utc(2026, 3, 7, 7, 30, 0), utc(2026, 3, 9, 6, 30, 0)]
        );
        let every_30 = Cron::new("0,30 * * * *", "America/New_York").unwrap();
        assert_eq!(
            ticks_between(&every_30, utc(2026, 3, 8, 6, 15, 0), utc(2026, 3, 8, 7, 30, 0)),
            vec![utc(2026, 3, 8, 6, 30, 0), utc(2026, 3, 8, 7, 0, 0), utc(2026, 3, 8, 7, 30, 0)]
        );
    }

    #[test]
    fn dst_back_a_repeated_time_fires_once_new_york() {
        let daily = Cron::new("30 1 * * *", "America/New_York").unwrap();
        // 01:30 happens twice on Nov 1st: EDT (05:30 UTC) fires, EST (06:30 UTC) does not.
        assert_eq!(
            ticks_between(&daily, utc(2026, 10, 31, 12, 0, 0), utc(2026, 11, 2, 12, 0, 0)),
            vec![utc(2026, 11, 1, 5, 30, 0), utc(2026, 11, 2, 6, 30, 0)]
        );
        let every_30 = Cron::new("0,30 * * * *", "America/New_York").unwrap();
        // 01:00, 01:30 EDT (05:00, 05:30 UTC); the EST repeats (06:00, 06:30 UTC) do not fire;
        // 02:00 EST (07:00 UTC).
        assert_eq!(
            ticks_between(&every_30, utc(2026, 11, 1, 4, 45, 0), utc(2026, 11, 1, 7, 0, 0)),
            vec![utc(2026, 11, 1, 5, 0, 0), utc(2026, 11, 1, 5, 30, 0), utc(2026, 11, 1, 7, 0, 0)]
        );
    }

    #[test]
    fn plan_fires_on_time_ticks_and_catches_up_as_asked() {
        let hourly = Cron::new("0 * * * *", "UTC").unwrap();
        let next = utc(2026, 1, 1, 1, 0, 0);
        // Down from 00:30 to 03:10: 01:00, 02:00 and 03:00 were missed.
        let now = utc(2026, 1, 1, 3, 10, 0);
        let after = Some(utc(2026, 1, 1, 4, 0, 0));
        assert_eq!(hourly.plan(next, now, CatchUp::Skip), TickPlan { fire: vec![], skipped: 3, next_tick: after });
        assert_eq!(
            hourly.plan(next, now, CatchUp::One),
            TickPlan { fire: vec![utc(2026, 1, 1, 3, 0, 0)], skipped: 2, next_tick: after }
        );
        assert_eq!(
            hourly.plan(next, now, CatchUp::All),
            TickPlan {
                fire: vec![utc(2026, 1, 1, 1, 0, 0), utc(2026, 1, 1, 2, 0, 0), utc(2026, 1, 1, 3, 0, 0)],
                skipped: 0,
                next_tick: after
            }
        );
        // Back just after 03:00: that tick is on time and fires under every policy; under `one`
        // it stands for the missed ones.
        let now = utc(2026, 1, 1, 3, 0, 5);
        assert_eq!(hourly.plan(next, now, CatchUp::Skip).fire, vec![utc(2026, 1, 1, 3, 0, 0)]);
        assert_eq!(hourly.plan(next, now, CatchUp::One).fire, vec![utc(2026, 1, 1, 3, 0, 0)]);
        assert_eq!(hourly.plan(next, now, CatchUp::One).skipped, 2);
        // Nothing due, or a clock gone back: nothing fires and the next tick stays.
        assert_eq!(
            hourly.plan(next, utc(2026, 1, 1, 0, 59, 59), CatchUp::All),
            TickPlan { fire: vec![], skipped: 0, next_tick: Some(next) }
        );
    }

    #[test]
    fn plan_all_is_bounded_and_keeps_the_latest() {
        let every_second = Cron::new("* * * * * *", "UTC").unwrap();
        let next = utc(2026, 1, 1, 0, 0, 1);
        let now = utc(2026, 1, 1, 1, 0, 0); // 3600 ticks due
        let plan = every_second.plan(next, now, CatchUp::All);
        let grace_ticks = usize::try_from(SCHEDULE_TICK_GRACE_MS / 1000).unwrap() + 1;
        assert_eq!(plan.fire.len(), SCHEDULE_CATCH_UP_MAX + grace_ticks);
        assert_eq!(plan.fire.last(), Some(&now));
        assert_eq!(plan.skipped, 3600 - u64::try_from(plan.fire.len()).unwrap());
        assert_eq!(plan.next_tick, Some(utc(2026, 1, 1, 1, 0, 1)));
    }

    #[test]
    fn stored_spec_reads_back() {
        let mut spec = ScheduleSpec::new(QueueName::new("reports").unwrap(), "0 6 * * 1-5");
        spec.timezone = "Europe/Berlin".into();
        spec.payload = vec![0, 159, 146, 150];
        spec.job.priority = 5;
        spec.job.headers.insert("kind".into(), "daily".into());
        spec.catch_up = CatchUp::All;
        spec.paused = true;
        assert_eq!(ScheduleSpec::from_stored(&spec.to_stored(), true).unwrap(), spec);
        assert!(spec.validate().is_ok());
        spec.job.priority = PRIORITY_MAX + 1;
        assert!(spec.validate().unwrap_err().detail().starts_with("job: "));
    }
}
