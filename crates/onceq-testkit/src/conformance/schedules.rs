//! Schedules (docs/design.md "Schedules", Invariant 14; `onceq_core::schedule`): each tick of a
//! schedule enqueues exactly one job, with the dedup id `schedule:<name>:<tick ms>`, however
//! often and however concurrently the store is asked to fire, and after a clock that jumps back;
//! a paused or deleted schedule fires nothing; after downtime the catch-up policy decides which
//! missed ticks fire; across daylight-saving changes a local time that does not exist fires
//! nothing and a repeated one fires once; a changed cron fires none of the old cron's ticks.
//!
//! Every function runs on a manual clock and calls `schedule_tick` after each move of it. The
//! store may also fire due ticks by itself (the embedded writer's housekeeping, the PostgreSQL
//! store's ticker): what fires is decided by the clock's reading, so the jobs are the same
//! whoever fired them, and the functions assert on the jobs, not on which call fired them.

use std::sync::Arc;

use onceq_core::limits::LEASE_BATCH_MAX;
use onceq_core::schedule::{CatchUp, ScheduleName, ScheduleSpec};
use onceq_core::{Clock, Error, JobId, ManualClock, Store, Timestamp};
use tokio::task::JoinSet;

use super::{open_manual, queue, within, Fixture};
use crate::Backend;

/// One minute, in milliseconds.
const MINUTE: u64 = 60_000;
/// One hour, in milliseconds.
const HOUR: u64 = 60 * MINUTE;
/// 2026-01-01T00:00:00Z, where the manual clock starts.
const START: i64 = 1_767_225_600_000;

/// A validated schedule name.
fn name(text: &str) -> ScheduleName {
    ScheduleName::new(text).unwrap()
}

/// A spec firing `cron` in `timezone` into `q`, with `catch_up`.
fn spec(q: &str, cron: &str, timezone: &str, catch_up: CatchUp) -> ScheduleSpec {
    let mut spec = ScheduleSpec::new(queue(q), cron);
    spec.timezone = timezone.to_owned();
    spec.catch_up = catch_up;
    spec.payload = format!("{{\"schedule\":\"{q}\"}}").into_bytes();
    spec
}

/// The instant `ms` after the clock's start.
fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(START + i64::try_from(ms).unwrap())
}

/// The instant of a UTC time in 2026.
fn utc(month: u32, day: u32, hour: u32, minute: u32) -> Timestamp {
    // Days before each month of 2026 (not a leap year).
    const BEFORE: [u64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let days = BEFORE[usize::try_from(month - 1).unwrap()] + u64::from(day - 1);
    at(days * 24 * HOUR + u64::from(hour) * HOUR + u64::from(minute) * MINUTE)
}

impl<S: Store + 'static> Fixture<S> {
    /// Fires what is due, from several concurrent calls at once (as many servers would).
    async fn tick(&self) {
        let mut set = JoinSet::new();
        for _ in 0..3 {
            let store = Arc::clone(&self.store);
            set.spawn(async move { store.schedule_tick().await.unwrap() });
        }
        while let Some(report) = within("schedule ticks", set.join_next()).await {
            report.unwrap();
        }
    }

    /// Moves the clock forward by `ms` and fires what is due.
    async fn advance_and_tick(&self, clock: &ManualClock, ms: u64) {
        clock.advance(ms);
        self.tick().await;
    }

    /// Takes every job of `q` (leases and acks them) and returns the ticks they stand for, in
    /// order; each job must carry `schedule`'s dedup id and the spec's payload.
    async fn take_ticks(&self, q: &str, schedule: &str) -> Vec<Timestamp> {
        let mut ticks = Vec::new();
        loop {
            let jobs = self.lease(&queue(q), LEASE_BATCH_MAX, Some(HOUR)).await;
            if jobs.is_empty() {
                break;
            }
            for job in &jobs {
                assert_eq!(job.payload, format!("{{\"schedule\":\"{q}\"}}").into_bytes(), "the tick's payload");
                let dedup = job.dedup_id.as_deref().expect("a tick's job has a dedup id");
                let prefix = format!("schedule:{schedule}:");
                let ms = dedup.strip_prefix(&prefix).unwrap_or_else(|| panic!("{dedup:?} is not {prefix}<ms>"));
                ticks.push(Timestamp::from_millis(ms.parse().unwrap()));
                self.store.job_ack(&[job.lease()]).await.unwrap().remove(0).unwrap();
            }
        }
        ticks.sort();
        let mut unique = ticks.clone();
        unique.dedup();
        assert_eq!(unique, ticks, "a tick enqueued two jobs (Invariant 14)");
        ticks
    }
}

/// Every tick enqueues exactly one job, however many calls fire at once; the schedule reads
/// back with its last tick, last job and next ticks.
pub async fn a_schedule_fires_one_job_per_tick<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let every_minute = name("every-minute");
    let info = f.store.schedule_upsert(&every_minute, spec("minutes", "* * * * *", "UTC", CatchUp::One)).await.unwrap();
    assert_eq!(info.next_tick, Some(at(MINUTE)));
    assert_eq!(info.next_ticks, (1..=5).map(|m| at(m * MINUTE)).collect::<Vec<_>>());
    assert_eq!((info.last_tick, info.last_job_id), (None, None));
    f.tick().await;
    assert_eq!(f.take_ticks("minutes", "every-minute").await, vec![], "nothing is due yet");
    let mut last_job: Option<JobId> = None;
    for minute in 1..=5 {
        f.advance_and_tick(&clock, MINUTE).await;
        f.tick().await;
        let ticks = f.take_ticks("minutes", "every-minute").await;
        assert_eq!(ticks, vec![at(minute * MINUTE)], "minute {minute}");
        let info = f.store.schedule_get(&every_minute).await.unwrap();
        assert_eq!(info.last_tick, Some(at(minute * MINUTE)));
        assert_ne!(info.last_job_id, last_job, "each tick has its own job");
        last_job = info.last_job_id;
        assert_eq!(info.next_tick, Some(at((minute + 1) * MINUTE)));
    }
    // A second schedule on the same queue keeps its own ticks apart (its own dedup ids).
    let six_fields = name("every-20-seconds");
    let mut twenty = spec("seconds", "*/20 * * * * *", "UTC", CatchUp::One);
    twenty.job.priority = 7;
    f.store.schedule_upsert(&six_fields, twenty.clone()).await.unwrap();
    f.advance_and_tick(&clock, MINUTE).await;
    let expected: Vec<Timestamp> = [20, 40, 60].iter().map(|s| at(5 * MINUTE + s * 1000)).collect();
    assert_eq!(
        f.take_ticks("seconds", "every-20-seconds").await,
        expected,
        "ticks within the grace period are on time"
    );
    let listed: Vec<String> = f.store.schedule_list().await.unwrap().iter().map(|s| s.name.to_string()).collect();
    assert_eq!(listed, vec!["every-20-seconds", "every-minute"]);
    assert_eq!(f.store.schedule_get(&six_fields).await.unwrap().spec, twenty);
}

/// A paused schedule fires nothing, and its ticks while paused are not caught up on resume
/// (whatever its catch-up policy): it goes on from its next tick after now.
pub async fn a_paused_schedule_fires_nothing<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let s = name("paused");
    f.store.schedule_upsert(&s, spec("p", "*/5 * * * *", "UTC", CatchUp::All)).await.unwrap();
    f.store.schedule_pause(&s).await.unwrap();
    f.store.schedule_pause(&s).await.unwrap();
    let info = f.store.schedule_get(&s).await.unwrap();
    assert!(info.spec.paused);
    assert_eq!(info.next_tick, None, "a paused schedule has no next tick");
    assert_eq!(info.next_ticks.first(), Some(&at(5 * MINUTE)), "what resuming now would fire next");
    f.advance_and_tick(&clock, HOUR).await;
    assert_eq!(f.take_ticks("p", "paused").await, vec![]);
    f.store.schedule_resume(&s).await.unwrap();
    f.tick().await;
    assert_eq!(f.take_ticks("p", "paused").await, vec![], "ticks while paused are not caught up");
    assert_eq!(f.store.schedule_get(&s).await.unwrap().next_tick, Some(at(HOUR + 5 * MINUTE)));
    f.advance_and_tick(&clock, 5 * MINUTE).await;
    assert_eq!(f.take_ticks("p", "paused").await, vec![at(HOUR + 5 * MINUTE)]);
    // Created paused: the same.
    let created_paused = name("created-paused");
    let mut paused_spec = spec("p2", "* * * * *", "UTC", CatchUp::All);
    paused_spec.paused = true;
    assert_eq!(f.store.schedule_upsert(&created_paused, paused_spec).await.unwrap().next_tick, None);
    f.advance_and_tick(&clock, 10 * MINUTE).await;
    assert_eq!(f.take_ticks("p2", "created-paused").await, vec![]);
}

/// A deleted schedule fires nothing more and is not found; the jobs it enqueued stay.
pub async fn a_deleted_schedule_fires_nothing_and_is_not_found<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let s = name("doomed");
    f.store.schedule_upsert(&s, spec("d", "* * * * *", "UTC", CatchUp::All)).await.unwrap();
    f.advance_and_tick(&clock, MINUTE).await;
    f.store.schedule_delete(&s).await.unwrap();
    assert_eq!(f.stats(&queue("d")).await.ready, 1, "the jobs it enqueued stay");
    assert_eq!(f.take_ticks("d", "doomed").await, vec![at(MINUTE)]);
    f.advance_and_tick(&clock, 10 * MINUTE).await;
    assert_eq!(f.take_ticks("d", "doomed").await, vec![]);
    let missing = Error::ScheduleNotFound("doomed".into());
    assert_eq!(f.store.schedule_get(&s).await, Err(missing.clone()));
    assert_eq!(f.store.schedule_delete(&s).await, Err(missing.clone()));
    assert_eq!(f.store.schedule_pause(&s).await, Err(missing.clone()));
    assert_eq!(f.store.schedule_resume(&s).await, Err(missing));
    assert_eq!(f.store.schedule_list().await.unwrap(), vec![]);
}

/// A cron or time zone that does not parse is refused naming its field, and nothing is stored.
pub async fn a_bad_cron_or_timezone_is_refused_naming_the_field<B: Backend>(backend: &B) {
    let (f, _clock) = open_manual(backend).await;
    let s = name("bad");
    for (cron, timezone, field) in [
        ("61 * * * *", "UTC", "cron: "),
        ("* * * *", "UTC", "cron: "),
        ("0 0 30 2 *", "UTC", "cron: "),
        ("* * * * *", "Mars/Olympus_Mons", "timezone: "),
    ] {
        match f.store.schedule_upsert(&s, spec("q", cron, timezone, CatchUp::One)).await {
            Err(Error::InvalidRequest(message)) => {
                assert!(message.starts_with(field), "{cron:?} in {timezone:?}: {message:?} names {field:?}")
            }
            other => panic!("{cron:?} in {timezone:?}: expected an invalid request, got {other:?}"),
        }
    }
    assert_eq!(f.store.schedule_list().await.unwrap(), vec![]);
}

/// A clock that jumps back fires no tick again: not at the ticks it passes a second time, not
/// after a re-applied spec; the schedule goes on with its next tick.
pub async fn a_clock_that_jumps_back_refires_nothing<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let s = name("jumpy");
    let jumpy = spec("j", "* * * * *", "UTC", CatchUp::All);
    f.store.schedule_upsert(&s, jumpy.clone()).await.unwrap();
    for _ in 0..3 {
        f.advance_and_tick(&clock, MINUTE).await;
    }
    assert_eq!(f.take_ticks("j", "jumpy").await, vec![at(MINUTE), at(2 * MINUTE), at(3 * MINUTE)]);
    clock.rewind(2 * MINUTE + 30_000);
    f.tick().await;
    f.store.schedule_upsert(&s, jumpy).await.unwrap();
    assert_eq!(f.store.schedule_get(&s).await.unwrap().next_tick, Some(at(4 * MINUTE)), "re-applying keeps it");
    for _ in 0..5 {
        f.advance_and_tick(&clock, 30_000).await;
    }
    // Back at 3 min: the ticks at 1, 2 and 3 min were passed again and fired nothing.
    assert_eq!(f.take_ticks("j", "jumpy").await, vec![]);
    f.advance_and_tick(&clock, MINUTE).await;
    assert_eq!(f.take_ticks("j", "jumpy").await, vec![at(4 * MINUTE)]);
}

/// After a three-hour downtime (nothing fired from 00:10 to 03:10), an hourly schedule fires
/// nothing of the three missed ticks under `skip`, the latest under `one`, all three oldest
/// first under `all`; each then goes on with the next tick, once.
pub async fn a_three_hour_downtime_catches_up_as_each_policy_says<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    for (policy, q) in [(CatchUp::Skip, "skip"), (CatchUp::One, "one"), (CatchUp::All, "all")] {
        f.store.schedule_upsert(&name(q), spec(q, "0 * * * *", "UTC", policy)).await.unwrap();
    }
    f.advance_and_tick(&clock, 10 * MINUTE).await;
    f.advance_and_tick(&clock, 3 * HOUR).await;
    assert_eq!(f.take_ticks("skip", "skip").await, vec![]);
    assert_eq!(f.take_ticks("one", "one").await, vec![at(3 * HOUR)]);
    assert_eq!(f.take_ticks("all", "all").await, vec![at(HOUR), at(2 * HOUR), at(3 * HOUR)]);
    for q in ["skip", "one", "all"] {
        let info = f.store.schedule_get(&name(q)).await.unwrap();
        assert_eq!(info.next_tick, Some(at(4 * HOUR)), "{q}");
        let expected_last = if q == "skip" { None } else { Some(at(3 * HOUR)) };
        assert_eq!(info.last_tick, expected_last, "{q}");
    }
    f.advance_and_tick(&clock, 50 * MINUTE).await;
    for q in ["skip", "one", "all"] {
        assert_eq!(f.take_ticks(q, q).await, vec![at(4 * HOUR)], "{q} goes on with its next tick");
    }
}

/// Across daylight-saving changes, through the store, in two time zones: a daily local time
/// that does not exist that day (the hour skipped going forward) fires nothing; one that happens
/// twice (the hour repeated going back) fires once, at its first instant.
pub async fn daylight_saving_changes_skip_missing_times_and_fire_repeated_ones_once<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    // (window start, schedule, cron, zone, the ticks in the 60 hours from the start)
    let windows = [
        // New York forward (Mar 8, 02:00 EST -> 03:00 EDT): no 02:30 on the 8th.
        (utc(3, 7, 0, 0), "ny-forward", "30 2 * * *", "America/New_York", vec![utc(3, 7, 7, 30), utc(3, 9, 6, 30)]),
        // Berlin forward (Mar 29, 02:00 CET -> 03:00 CEST): no 02:30 on the 29th.
        (utc(3, 28, 0, 0), "berlin-forward", "30 2 * * *", "Europe/Berlin", vec![utc(3, 28, 1, 30), utc(3, 30, 0, 30)]),
        // Berlin back (Oct 25, 03:00 CEST -> 02:00 CET): 02:30 twice on the 25th, fires at the first.
        (
            utc(10, 24, 0, 0),
            "berlin-back",
            "30 2 * * *",
            "Europe/Berlin",
            vec![utc(10, 24, 0, 30), utc(10, 25, 0, 30), utc(10, 26, 1, 30)],
        ),
        // New York back (Nov 1, 02:00 EDT -> 01:00 EST): 01:30 twice on the 1st, fires at the first.
        (
            utc(10, 31, 0, 0),
            "ny-back",
            "30 1 * * *",
            "America/New_York",
            vec![utc(10, 31, 5, 30), utc(11, 1, 5, 30), utc(11, 2, 6, 30)],
        ),
    ];
    for (start, schedule, cron, zone, expected) in windows {
        clock.advance(start.ms_since(clock.now()));
        assert_eq!(clock.now(), start);
        f.store.schedule_upsert(&name(schedule), spec(schedule, cron, zone, CatchUp::All)).await.unwrap();
        // Half-hour steps: every tick of these crons is on a step, so each fires on time.
        for _ in 0..120 {
            f.advance_and_tick(&clock, 30 * MINUTE).await;
        }
        assert_eq!(f.take_ticks(schedule, schedule).await, expected, "{schedule}");
        f.store.schedule_delete(&name(schedule)).await.unwrap();
    }
}

/// Replacing a schedule's cron fires none of the old cron's ticks and none of the new cron's
/// ticks before the change; re-applying an unchanged spec keeps its next tick.
pub async fn changing_the_cron_keeps_no_phantom_ticks<B: Backend>(backend: &B) {
    let (f, clock) = open_manual(backend).await;
    let s = name("changing");
    f.store.schedule_upsert(&s, spec("c", "0 * * * *", "UTC", CatchUp::All)).await.unwrap();
    f.advance_and_tick(&clock, HOUR).await;
    assert_eq!(f.take_ticks("c", "changing").await, vec![at(HOUR)]);
    f.advance_and_tick(&clock, 20 * MINUTE).await;
    // At 01:20: the new cron's 01:10 is past (never fires); the old cron's 02:00 and 03:00 are
    // not the new cron's (never fire).
    let changed = spec("c", "10,30 * * * *", "UTC", CatchUp::All);
    let info = f.store.schedule_upsert(&s, changed.clone()).await.unwrap();
    assert_eq!(info.next_tick, Some(at(HOUR + 30 * MINUTE)));
    assert_eq!(info.last_tick, Some(at(HOUR)), "the last tick stays");
    f.advance_and_tick(&clock, 75 * MINUTE).await; // 02:35
    assert_eq!(f.store.schedule_upsert(&s, changed).await.unwrap().next_tick, Some(at(3 * HOUR + 10 * MINUTE)));
    f.advance_and_tick(&clock, 25 * MINUTE).await; // 03:00
    assert_eq!(
        f.take_ticks("c", "changing").await,
        vec![at(HOUR + 30 * MINUTE), at(2 * HOUR + 10 * MINUTE), at(2 * HOUR + 30 * MINUTE)]
    );
    // A new time zone is a new set of ticks too: from now on.
    let zoned = spec("c", "10,30 * * * *", "Asia/Kolkata", CatchUp::All); // UTC+05:30
    let info = f.store.schedule_upsert(&s, zoned).await.unwrap();
    assert_eq!(info.next_tick, Some(at(3 * HOUR + 40 * MINUTE)), "xx:10 in Kolkata is xx:40 UTC");
    f.advance_and_tick(&clock, HOUR).await;
    assert_eq!(f.take_ticks("c", "changing").await, vec![at(3 * HOUR + 40 * MINUTE), at(4 * HOUR)]);
}
