//! Flow control: a queue's rate limit, in-flight limit and depth limit (docs/design.md,
//! Invariant 15), as pure functions every store applies under its own lock.
//!
//! # The rate limit is a GCRA bucket
//!
//! A bucket is one number, its *theoretical arrival time* (`tat`, nanoseconds of the store's
//! clock): the time at which the bucket would be full again. A lease of `n` jobs at `now` may
//! take them when `max(tat, now) + n × interval <= now + burst × interval`, and then sets `tat`
//! to `max(tat, now) + n × interval`. The interval is `1 / per_second`, rounded **up** to a whole
//! nanosecond, so the bucket never runs faster than configured. Integers only: a window's count
//! never depends on rounding.
//!
//! Why that holds the invariant: take any window `[t0, t1]` and the `k` jobs leased in it. Each
//! lease starts from `max(tat, now) >= t0` and adds one interval per job, so after the window's
//! last lease `tat >= t0 + k × interval`; that lease was allowed, so `tat <= t1 + burst ×
//! interval`. Hence `k <= burst + (t1 - t0) / interval <= burst + per_second × (t1 - t0)`.
//!
//! A bucket that a store cannot vouch for (the embedded store after a restart) starts **empty**
//! ([`RateLimit::empty_tat`]): the window that spans the restart still holds, since the leases
//! before it left `tat <= restart + burst × interval` and the empty bucket starts there.

use serde::{Deserialize, Serialize};

use crate::limits::*;
use crate::{Error, Result};

/// Nanoseconds per millisecond of the store's clock.
const NS_PER_MS: i64 = 1_000_000;

/// Leases per second, with a burst: `{"per_second": 50, "burst": 10}`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimit {
    /// Sustained leases per second, [`RATE_PER_SECOND_MIN`] to [`RATE_PER_SECOND_MAX`] (fractions
    /// allowed: `0.5` is one lease every two seconds).
    pub per_second: f64,
    /// Most leases at once after a quiet spell, 1 to [`RATE_BURST_MAX`].
    pub burst: u32,
}

impl RateLimit {
    /// Checks both fields against their limits.
    pub fn validate(&self) -> Result<()> {
        if !(RATE_PER_SECOND_MIN..=RATE_PER_SECOND_MAX).contains(&self.per_second) {
            return Err(Error::invalid(format!(
                "rate_limit.per_second is {}; it must be between {RATE_PER_SECOND_MIN} and {RATE_PER_SECOND_MAX}",
                self.per_second
            )));
        }
        if !(1..=RATE_BURST_MAX).contains(&self.burst) {
            return Err(Error::invalid(format!(
                "rate_limit.burst is {}; it must be between 1 and {RATE_BURST_MAX}",
                self.burst
            )));
        }
        Ok(())
    }

    /// Nanoseconds between two leases at the sustained rate, rounded up.
    pub fn interval_ns(&self) -> i64 {
        let interval = (1e9 / self.per_second).ceil();
        // per_second >= RATE_PER_SECOND_MIN keeps this far below i64::MAX.
        interval as i64
    }

    /// The `tat` of an empty bucket at `now_ms`: no lease until one interval has passed.
    pub fn empty_tat(&self, now_ms: i64) -> i64 {
        now_ms.saturating_mul(NS_PER_MS).saturating_add(i64::from(self.burst).saturating_mul(self.interval_ns()))
    }

    /// The `tat` of a full bucket at `now_ms`: a whole burst may go at once.
    pub fn full_tat(&self, now_ms: i64) -> i64 {
        now_ms.saturating_mul(NS_PER_MS)
    }

    /// How many of `want` jobs the bucket at `tat` lets a lease at `now_ms` take.
    pub fn granted(&self, tat: i64, now_ms: i64, want: u32) -> u32 {
        let now = now_ms.saturating_mul(NS_PER_MS);
        let interval = self.interval_ns();
        let room = now.saturating_add(i64::from(self.burst).saturating_mul(interval)) - tat.max(now);
        if room < interval {
            return 0;
        }
        u32::try_from(room / interval).unwrap_or(u32::MAX).min(want)
    }

    /// The bucket's `tat` after a lease at `now_ms` took `taken` jobs (at most what
    /// [`RateLimit::granted`] allowed).
    pub fn after(&self, tat: i64, now_ms: i64, taken: u32) -> i64 {
        debug_assert!(taken <= self.granted(tat, now_ms, taken), "a lease took more than its bucket granted");
        if taken == 0 {
            return tat;
        }
        tat.max(now_ms.saturating_mul(NS_PER_MS)).saturating_add(i64::from(taken).saturating_mul(self.interval_ns()))
    }

    /// Milliseconds from `now_ms` until the bucket at `tat` grants one job (0: it does now),
    /// rounded up.
    pub fn next_token_ms(&self, tat: i64, now_ms: i64) -> u64 {
        let now = now_ms.saturating_mul(NS_PER_MS);
        let interval = self.interval_ns();
        // One job is granted once now + burst × interval - tat >= interval.
        let at = tat.saturating_sub(i64::from(self.burst - 1).saturating_mul(interval));
        let wait = at.saturating_sub(now).max(0);
        u64::try_from((wait + NS_PER_MS - 1) / NS_PER_MS).unwrap_or(u64::MAX)
    }
}

/// Which limit held a lease back, as the `limit` label of [`crate::metrics::FLOW_HELD_BACK`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeldBy {
    /// The queue's rate limit.
    Rate,
    /// The queue's in-flight limit.
    InFlight,
}

impl HeldBy {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HeldBy::Rate => "rate",
            HeldBy::InFlight => "in_flight",
        }
    }
}

/// What a queue's limits let one lease take: at most `jobs`, and which limit (if any) made it
/// fewer than asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Most jobs the lease may take.
    pub jobs: u32,
    /// The limit that cut the ask, if one did.
    pub held_by: Option<HeldBy>,
}

/// What the limits of a queue let a lease of `want` jobs take at `now_ms`, with `live_leases`
/// live leases and its bucket at `tat` (`None`: no rate limit).
pub fn grant(
    rate: Option<(&RateLimit, i64)>,
    max_in_flight: Option<u32>,
    live_leases: u64,
    now_ms: i64,
    want: u32,
) -> Grant {
    let mut out = Grant { jobs: want, held_by: None };
    if let Some(max) = max_in_flight {
        let room = u64::from(max).saturating_sub(live_leases);
        let room = u32::try_from(room).unwrap_or(u32::MAX);
        if room < out.jobs {
            out = Grant { jobs: room, held_by: Some(HeldBy::InFlight) };
        }
    }
    if let Some((limit, tat)) = rate {
        let allowed = limit.granted(tat, now_ms, out.jobs);
        if allowed < out.jobs {
            out = Grant { jobs: allowed, held_by: Some(HeldBy::Rate) };
        }
    }
    out
}

/// Checks an enqueue of `adding` jobs into `queue`, which holds `depth` jobs (ready, scheduled,
/// leased and blocked; dead ones do not count), against its `max_depth`: refused whole with
/// [`Error::RateLimited`] if it would take the depth past it.
pub fn check_depth(queue: &crate::QueueName, max_depth: Option<u64>, depth: u64, adding: usize) -> Result<()> {
    let Some(max) = max_depth else { return Ok(()) };
    let adding = adding as u64;
    if depth.saturating_add(adding) <= max {
        return Ok(());
    }
    metrics::counter!(crate::metrics::MAX_DEPTH_REFUSALS, "queue" => queue.to_string()).increment(1);
    Err(Error::RateLimited {
        message: format!(
            "queue {queue} holds {depth} jobs and max_depth is {max}: these {adding} jobs would pass it, so none \
             was enqueued; retry after the consumers catch up"
        ),
        retry_after_ms: MAX_DEPTH_RETRY_AFTER_MS,
    })
}

/// How long to wait before try `attempt + 1` (1-based `attempt`: the try that was refused) of a
/// request refused with [`Error::RateLimited`] and its `retry_after_ms`: never sooner than the
/// store asked, doubling with each refusal up to [`RATE_LIMITED_BACKOFF_MS_MAX`], plus up to
/// half again at random, so that producers refused together do not all come back at once.
pub fn retry_delay(retry_after_ms: u64, attempt: u32, rng: &mut impl rand::Rng) -> std::time::Duration {
    let doubled = retry_after_ms.max(1).saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    let base = doubled.min(RATE_LIMITED_BACKOFF_MS_MAX).max(retry_after_ms.min(RATE_LIMITED_BACKOFF_MS_MAX));
    let jitter = rng.gen_range(0..=base / 2);
    std::time::Duration::from_millis(base + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn a_full_bucket_grants_the_burst_then_the_rate() {
        let l = limit(10.0, 3);
        let mut tat = l.full_tat(0);
        assert_eq!(l.granted(tat, 0, 100), 3);
        tat = l.after(tat, 0, 3);
        assert_eq!(l.granted(tat, 0, 1), 0);
        assert_eq!(l.next_token_ms(tat, 0), 100);
        assert_eq!(l.granted(tat, 99, 1), 0);
        assert_eq!(l.granted(tat, 100, 5), 1);
        tat = l.after(tat, 100, 1);
        assert_eq!(l.granted(tat, 1000, 100), 3, "a quiet second refills the burst, no more");
    }

    #[test]
    fn an_empty_bucket_waits_one_interval() {
        let l = limit(2.0, 5);
        let tat = l.empty_tat(1_000);
        assert_eq!(l.granted(tat, 1_000, 1), 0);
        assert_eq!(l.next_token_ms(tat, 1_000), 500);
        assert_eq!(l.granted(tat, 1_500, 9), 1);
    }

    #[test]
    fn every_window_holds_burst_plus_rate_times_length() {
        // Greedy leases every millisecond for 3 s; then every window is checked.
        for (per_second, burst) in [(50.0, 10), (3.0, 1), (0.5, 2), (1000.0, 7), (333.0, 4)] {
            let l = limit(per_second, burst);
            let mut tat = l.full_tat(0);
            let mut times = Vec::new();
            for now in 0..3_000i64 {
                let n = l.granted(tat, now, 1000);
                tat = l.after(tat, now, n);
                times.extend(std::iter::repeat_n(now, n as usize));
            }
            for (i, &t0) in times.iter().enumerate() {
                for (j, &t1) in times.iter().enumerate().skip(i) {
                    let k = (j - i + 1) as f64;
                    let bound = f64::from(burst) + per_second * (t1 - t0) as f64 / 1000.0;
                    assert!(k <= bound + 1e-9, "{per_second}/s burst {burst}: {k} leases in [{t0}, {t1}] ms");
                }
            }
            let expected = f64::from(burst) + per_second * 2.999;
            assert!(times.len() as f64 >= expected.floor() - 1.0, "{per_second}/s: only {} leases", times.len());
        }
    }

    #[test]
    fn the_tightest_limit_decides() {
        let l = limit(10.0, 3);
        assert_eq!(grant(None, None, 0, 0, 7), Grant { jobs: 7, held_by: None });
        assert_eq!(grant(None, Some(5), 3, 0, 7), Grant { jobs: 2, held_by: Some(HeldBy::InFlight) });
        assert_eq!(grant(None, Some(5), 9, 0, 7), Grant { jobs: 0, held_by: Some(HeldBy::InFlight) });
        assert_eq!(grant(Some((&l, 0)), Some(5), 0, 0, 7), Grant { jobs: 3, held_by: Some(HeldBy::Rate) });
        assert_eq!(grant(Some((&l, 0)), Some(5), 4, 0, 7), Grant { jobs: 1, held_by: Some(HeldBy::InFlight) });
    }

    #[test]
    fn limits_are_validated() {
        assert!(limit(RATE_PER_SECOND_MAX, RATE_BURST_MAX).validate().is_ok());
        assert!(limit(RATE_PER_SECOND_MIN, 1).validate().is_ok());
        for bad in [limit(0.0, 1), limit(-1.0, 1), limit(f64::NAN, 1), limit(RATE_PER_SECOND_MAX * 2.0, 1)] {
            assert!(matches!(bad.validate(), Err(Error::InvalidRequest(m)) if m.contains("per_second")));
        }
        for bad in [limit(1.0, 0), limit(1.0, RATE_BURST_MAX + 1)] {
            assert!(matches!(bad.validate(), Err(Error::InvalidRequest(m)) if m.contains("burst")));
        }
    }

    #[test]
    fn retries_wait_at_least_the_pause_asked_doubling_with_jitter() {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let first = retry_delay(1_000, 1, &mut rng).as_millis() as u64;
            assert!((1_000..=1_500).contains(&first), "{first}");
            let third = retry_delay(1_000, 3, &mut rng).as_millis() as u64;
            assert!((4_000..=6_000).contains(&third), "{third}");
            let late = retry_delay(1_000, 30, &mut rng).as_millis() as u64;
            let max = RATE_LIMITED_BACKOFF_MS_MAX;
            assert!((max..=max + max / 2).contains(&late), "{late}");
        }
    }

    #[test]
    fn depth_refuses_a_batch_whole() {
        let q = crate::QueueName::new("q").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(check_depth(&q, None, 10, 10), Ok(()));
        assert_eq!(check_depth(&q, Some(10), 7, 3), Ok(()));
        assert!(matches!(
            check_depth(&q, Some(10), 7, 4),
            Err(Error::RateLimited { retry_after_ms: MAX_DEPTH_RETRY_AFTER_MS, .. })
        ));
    }
}
