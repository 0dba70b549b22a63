//! Paced redrives: a redrive of a queue's dead letters that runs in the background at a rate
//! (`POST /v1/queues/{queue}/dead/redrive` with `rate_per_second`), so that a fixed consumer is
//! not flooded by the backlog of its outage.
//!
//! The store keeps each paced redrive as a row and steps it itself (the embedded store's writer,
//! every PostgreSQL store of a cluster), so it survives a restart and any number of servers share
//! one pace. A step redrives what the rate earned since the last step, oldest id first, above
//! the cursor of the last step, and moves the cursor in the same transaction.
//!
//! **No job is redriven twice by one paced redrive**, even across kill -9: its filter only takes
//! jobs that died *by the time it started* (`dead_before` is capped just after its creation
//! time), and no step moves a job in that millisecond (nothing is earned yet). A job it redrove
//! that dies again has died after that time, so it no longer matches.

use serde::{Deserialize, Serialize};

use crate::limits::{REDRIVES_RUNNING_MAX, REDRIVES_RUNNING_PER_QUEUE_MAX, REDRIVE_RATE_MAX, REDRIVE_STEP_MAX};
use crate::{Error, JobId, QueueName, RedriveId, Result, Timestamp};

/// Which dead jobs to make ready again, and where. The filters combine (all must hold); a dead
/// job's *last* error is the one it died of, and its time is when it died.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Redrive {
    /// These jobs (ids of jobs that are not dead in this queue are skipped); `None` means all.
    pub ids: Option<Vec<JobId>>,
    /// At most this many, oldest first.
    pub limit: Option<u64>,
    /// Only jobs whose last error contains this text (case-sensitive), 1 to
    /// [`REDRIVE_FILTER_BYTES_MAX`](crate::limits::REDRIVE_FILTER_BYTES_MAX) bytes.
    pub error_contains: Option<String>,
    /// Only jobs that died at or after this time.
    pub dead_after: Option<Timestamp>,
    /// Only jobs that died before this time (exclusive).
    pub dead_before: Option<Timestamp>,
    /// Only jobs that died after at least this many attempts.
    pub min_attempts: Option<u32>,
    /// Only jobs with an id above this one (a paced redrive's cursor).
    pub after: Option<JobId>,
    /// Redrive into this queue instead of the job's own (neither may order per key); the job
    /// keeps its id, payload, headers, priority, max attempts and error history.
    pub to_queue: Option<QueueName>,
    /// Count the matching jobs and move none.
    pub dry_run: bool,
}

impl Redrive {
    /// Whether any filter other than `ids` and `limit` is set: without one, every dead job (of
    /// the ids, if given) matches.
    pub fn filters(&self) -> bool {
        self.error_contains.is_some()
            || self.dead_after.is_some()
            || self.dead_before.is_some()
            || self.min_attempts.is_some()
            || self.after.is_some()
    }
}

/// What a redrive found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Redriven {
    /// Dead jobs that pass the filters (the limit aside).
    pub matched: u64,
    /// Jobs made ready (0 in a dry run; at most the limit).
    pub redriven: u64,
    /// The highest id redriven (a paced redrive's next cursor); `None` when none was.
    pub last: Option<JobId>,
}

impl std::str::FromStr for RedriveId {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        text.parse::<u64>()
            .map(RedriveId::new)
            .map_err(|_| Error::invalid(format!("{text:?} is not a redrive id (a decimal number)")))
    }
}

impl<'de> Deserialize<'de> for RedriveId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|e: Error| serde::de::Error::custom(e.detail()))
    }
}

/// Where a paced redrive is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RedriveState {
    /// Stepping at its rate.
    Running,
    /// Stopped by a caller, or by an error it names (its queue or destination was deleted).
    Stopped,
    /// Every matching job was redriven (or its limit was reached).
    Done,
}

impl RedriveState {
    /// The state's number in a store's row.
    pub const fn code(self) -> i64 {
        match self {
            RedriveState::Running => 0,
            RedriveState::Stopped => 1,
            RedriveState::Done => 2,
        }
    }

    /// The state a store's row holds.
    pub fn from_code(code: i64) -> Result<Self> {
        match code {
            0 => Ok(RedriveState::Running),
            1 => Ok(RedriveState::Stopped),
            2 => Ok(RedriveState::Done),
            other => Err(Error::Storage(format!("a paced redrive has state {other}, which no version wrote"))),
        }
    }
}

/// A paced redrive as a store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacedRedrive {
    /// Its id.
    pub id: RedriveId,
    /// The queue whose dead letters it redrives.
    pub queue: QueueName,
    /// Which jobs, and where to: `dead_before` is at most `created_at`; `limit` caps the whole
    /// redrive; `after` and `dry_run` are unset (the cursor is `cursor`).
    pub filter: Redrive,
    /// Jobs per second.
    pub rate_per_second: u32,
    /// Running, stopped or done.
    pub state: RedriveState,
    /// The matching dead jobs when it started.
    pub matched: u64,
    /// Jobs redriven so far.
    pub redriven: u64,
    /// The highest id redriven so far: the next step starts above it.
    pub cursor: Option<JobId>,
    /// When it started.
    pub created_at: Timestamp,
    /// When it stopped or finished.
    pub finished_at: Option<Timestamp>,
    /// Why it stopped, when an error stopped it.
    pub error: Option<String>,
}

impl PacedRedrive {
    /// The redrive of a step that may move `take` jobs: above the cursor, within the limit;
    /// `None` when the limit is reached.
    pub fn step(&self, take: u64) -> Option<Redrive> {
        let left = self.filter.limit.map_or(u64::MAX, |limit| limit.saturating_sub(self.redriven));
        let take = take.min(left);
        (take > 0).then(|| Redrive { limit: Some(take), after: self.cursor, dry_run: false, ..self.filter.clone() })
    }

    /// Whether the limit is reached.
    pub fn limit_reached(&self) -> bool {
        self.filter.limit.is_some_and(|limit| self.redriven >= limit)
    }
}

/// A paced redrive's budget, as a store keeps it beside the row: thousandths of a job earned and
/// not yet spent, and when it was last stepped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// Thousandths of a job earned and not yet spent, at most one second's worth.
    pub budget_milli: i64,
    /// When the budget was last topped up.
    pub stepped_at: Timestamp,
}

impl Pace {
    /// The pace of a redrive that starts at `now`: nothing earned yet.
    pub fn start(now: Timestamp) -> Self {
        Pace { budget_milli: 0, stepped_at: now }
    }

    /// Tops the budget up for the time since the last step (at most one second's worth, so a
    /// redrive that was not stepped for a while, a server down, does not burst) and takes the
    /// whole jobs it holds, at most [`REDRIVE_STEP_MAX`]: `(jobs to take, the pace after)`.
    pub fn earn(self, rate_per_second: u32, now: Timestamp) -> (u64, Pace) {
        let elapsed_ms = now.as_millis().saturating_sub(self.stepped_at.as_millis()).max(0);
        let rate = i64::from(rate_per_second);
        let budget = self.budget_milli.saturating_add(rate.saturating_mul(elapsed_ms)).min(rate.saturating_mul(1000));
        let take = (budget / 1000).min(REDRIVE_STEP_MAX as i64);
        let stepped_at = if elapsed_ms > 0 { now } else { self.stepped_at };
        (take.unsigned_abs(), Pace { budget_milli: budget - take * 1000, stepped_at })
    }
}

/// The filter a paced redrive keeps for `redrive` started at `now`: `dead_before` capped at
/// just after `now` (jobs that died at or before the start: what makes a job redriven at most
/// once, since no step runs in the start's millisecond), no cursor, not a dry run. Checks the
/// rate.
pub fn paced_filter(redrive: &Redrive, rate_per_second: u32, now: Timestamp) -> Result<Redrive> {
    if !(1..=REDRIVE_RATE_MAX).contains(&rate_per_second) {
        return Err(Error::invalid(format!(
            "rate_per_second is {rate_per_second}; it must be between 1 and {REDRIVE_RATE_MAX}"
        )));
    }
    if redrive.dry_run {
        return Err(Error::invalid("a dry run counts at once: it takes no rate_per_second"));
    }
    if redrive.after.is_some() {
        return Err(Error::invalid("a paced redrive keeps its own cursor: it takes no after"));
    }
    let cap = Timestamp::from_millis(now.as_millis().saturating_add(1));
    let dead_before = Some(redrive.dead_before.map_or(cap, |before| before.min(cap)));
    Ok(Redrive { dead_before, after: None, dry_run: false, ..redrive.clone() })
}

/// Refuses a new paced redrive of `queue` when `running` run in the store, `on_queue` of them on
/// `queue`, and either is at its limit.
pub fn running_within_limits(running: u64, on_queue: u64, queue: &QueueName) -> Result<()> {
    if on_queue >= REDRIVES_RUNNING_PER_QUEUE_MAX as u64 {
        return Err(Error::Conflict(format!(
            "{on_queue} paced redrives of queue {queue} are running, the most one queue runs at once; \
             stop one or wait for one to finish"
        )));
    }
    if running >= REDRIVES_RUNNING_MAX as u64 {
        return Err(Error::Conflict(format!(
            "{running} paced redrives are running, the most a store runs at once; stop one or wait for one to finish"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_budget_earns_the_rate_and_never_more_than_a_second() {
        let t = |ms| Timestamp::from_millis(ms);
        let pace = Pace::start(t(0));
        assert_eq!(pace.earn(100, t(0)), (0, pace));
        let (take, pace) = pace.earn(100, t(105));
        assert_eq!((take, pace.budget_milli, pace.stepped_at), (10, 500, t(105)));
        let (take, pace) = pace.earn(100, t(110));
        assert_eq!((take, pace.budget_milli), (1, 0));
        // An hour away earns one second's worth, not an hour's.
        let (take, pace) = pace.earn(100, t(3_600_110));
        assert_eq!((take, pace.budget_milli), (100, 0));
        // Past the step cap, the rest stays in the budget.
        let (take, pace) = Pace::start(t(0)).earn(REDRIVE_RATE_MAX, t(1000));
        assert_eq!(take, REDRIVE_STEP_MAX as u64);
        assert!(pace.budget_milli > 0);
        // A clock that went back earns nothing and loses nothing.
        let back = Pace { budget_milli: 700, stepped_at: t(5000) };
        assert_eq!(back.earn(100, t(4000)), (0, back));
    }

    #[test]
    fn a_paced_filter_takes_only_jobs_dead_before_it_started() {
        let now = Timestamp::from_millis(10_000);
        let filter = paced_filter(&Redrive::default(), 50, now).unwrap();
        assert_eq!(filter.dead_before, Some(Timestamp::from_millis(10_001)), "dead at or before the start");
        let earlier = Redrive { dead_before: Some(Timestamp::from_millis(5)), ..Redrive::default() };
        assert_eq!(paced_filter(&earlier, 50, now).unwrap().dead_before, Some(Timestamp::from_millis(5)));
        assert!(paced_filter(&Redrive::default(), 0, now).is_err());
        assert!(paced_filter(&Redrive::default(), REDRIVE_RATE_MAX + 1, now).is_err());
        assert!(paced_filter(&Redrive { dry_run: true, ..Redrive::default() }, 5, now).is_err());
    }

    #[test]
    fn a_step_stays_within_the_limit() {
        let now = Timestamp::from_millis(0);
        let paced = PacedRedrive {
            id: RedriveId::new(1),
            queue: QueueName::new("q").unwrap(),
            filter: Redrive { limit: Some(25), ..Redrive::default() },
            rate_per_second: 10,
            state: RedriveState::Running,
            matched: 40,
            redriven: 20,
            cursor: Some(JobId::new(7)),
            created_at: now,
            finished_at: None,
            error: None,
        };
        let step = paced.step(10).unwrap();
        assert_eq!((step.limit, step.after), (Some(5), Some(JobId::new(7))));
        assert_eq!(PacedRedrive { redriven: 25, ..paced.clone() }.step(10), None);
        assert!(PacedRedrive { redriven: 25, ..paced }.limit_reached());
    }
}
