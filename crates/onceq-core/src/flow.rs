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

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::job::Headers;
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
    /// A key's rate bucket (`rate_limit_by`).
    RatePerKey,
    /// A key's in-flight limit (`max_in_flight_per_key`).
    InFlightPerKey,
}

impl HeldBy {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            HeldBy::Rate => "rate",
            HeldBy::InFlight => "in_flight",
            HeldBy::RatePerKey => "rate_per_key",
            HeldBy::InFlightPerKey => "in_flight_per_key",
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

/// What per-key limits key a job by: `"ordering_key"` or `"header:<name>"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyBy {
    /// The job's `ordering_key`.
    OrderingKey,
    /// The value of the job's header of this name (1 to [`HEADER_NAME_LEN_MAX`] bytes).
    Header(String),
}

impl KeyBy {
    /// The key of a job with `ordering_key` and `headers` (`None`: the job has none).
    pub fn key_of<'a>(&self, ordering_key: Option<&'a str>, headers: &'a Headers) -> Option<&'a str> {
        match self {
            KeyBy::OrderingKey => ordering_key,
            KeyBy::Header(name) => headers.get(name).map(String::as_str),
        }
    }
}

impl FromStr for KeyBy {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        if text == "ordering_key" {
            return Ok(KeyBy::OrderingKey);
        }
        let Some(name) = text.strip_prefix("header:") else {
            return Err(Error::invalid(format!(
                "rate_limit_by is {text:?}; it must be \"ordering_key\" or \"header:<name>\""
            )));
        };
        if name.is_empty() || name.len() > HEADER_NAME_LEN_MAX {
            return Err(Error::invalid(format!(
                "rate_limit_by names header {name:?}; a header name is 1 to {HEADER_NAME_LEN_MAX} bytes"
            )));
        }
        Ok(KeyBy::Header(name.to_string()))
    }
}

impl fmt::Display for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyBy::OrderingKey => f.write_str("ordering_key"),
            KeyBy::Header(name) => write!(f, "header:{name}"),
        }
    }
}

impl Serialize for KeyBy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyBy {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        /// Names the field in a wrong type's error too.
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = KeyBy;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("rate_limit_by as a string: \"ordering_key\" or \"header:<name>\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> std::result::Result<KeyBy, E> {
                text.parse().map_err(|e: Error| E::custom(e.detail()))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// Candidate rows a lease of `want` jobs reads from a queue with per-key limits:
/// [`FLOW_KEY_SCAN_FACTOR`] per job, at least [`FLOW_KEY_SCAN_MIN`], at most
/// [`FLOW_KEY_SCAN_MAX`].
pub fn key_scan_rows(want: u32) -> u32 {
    want.saturating_mul(FLOW_KEY_SCAN_FACTOR).clamp(FLOW_KEY_SCAN_MIN, FLOW_KEY_SCAN_MAX)
}

/// What per-key limits chose from a lease's candidates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPick {
    /// Indexes of the candidates taken, in their order.
    pub picked: Vec<usize>,
    /// Candidates a per-key limit skipped.
    pub held: u32,
    /// The limit that skipped the first of them.
    pub held_by: Option<HeldBy>,
    /// Milliseconds until the earliest bucket that skipped a candidate grants a token; `None`:
    /// no bucket skipped one.
    pub retry_ms: Option<u64>,
    /// The new `tat` of each rate bucket that granted jobs (`None`: the bucket of jobs without a
    /// key).
    pub buckets: Vec<(Option<String>, i64)>,
}

/// Takes up to `want` of `keys` (the key of each candidate, in lease order) under per-key limits
/// at `now_ms`: a candidate is skipped when its key already has `max_in_flight` live leases
/// (`live_of`, plus those this pick takes; jobs without a key have no such limit), or when its
/// key's bucket of `rate` (as `tat_of` reads it; jobs without a key share one) grants no token.
/// Skipped keys take no token, and later candidates of other keys go on.
pub fn pick_by_key(
    keys: &[Option<&str>],
    want: u32,
    now_ms: i64,
    rate: Option<&RateLimit>,
    max_in_flight: Option<u32>,
    mut tat_of: impl FnMut(Option<&str>) -> i64,
    mut live_of: impl FnMut(&str) -> u64,
) -> KeyPick {
    let mut out = KeyPick::default();
    let mut tats: HashMap<Option<&str>, (i64, bool)> = HashMap::new();
    let mut live: HashMap<&str, u64> = HashMap::new();
    for (i, &key) in keys.iter().enumerate() {
        if out.picked.len() >= want as usize {
            break;
        }
        if let (Some(max), Some(k)) = (max_in_flight, key) {
            let n = *live.entry(k).or_insert_with(|| live_of(k));
            if n >= u64::from(max) {
                out.held += 1;
                out.held_by.get_or_insert(HeldBy::InFlightPerKey);
                continue;
            }
        }
        if let Some(rate) = rate {
            let (tat, _) = *tats.entry(key).or_insert_with(|| (tat_of(key), false));
            if rate.granted(tat, now_ms, 1) == 0 {
                out.held += 1;
                out.held_by.get_or_insert(HeldBy::RatePerKey);
                let wait = rate.next_token_ms(tat, now_ms).max(1);
                out.retry_ms = Some(out.retry_ms.map_or(wait, |w| w.min(wait)));
                continue;
            }
            tats.insert(key, (rate.after(tat, now_ms, 1), true));
        }
        if let Some(k) = key {
            *live.entry(k).or_insert(0) += 1;
        }
        out.picked.push(i);
    }
    out.buckets =
        tats.into_iter().filter(|(_, (_, took))| *took).map(|(k, (tat, _))| (k.map(str::to_string), tat)).collect();
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
    fn per_key_limits_skip_held_keys_and_take_other_keys() {
        let l = limit(10.0, 1);
        let keys = [Some("a"), Some("a"), Some("b"), None, None, Some("c")];
        // "a" has one token and a cap of one, "b" is at its cap, jobs without a key share one bucket.
        let pick = pick_by_key(&keys, 10, 0, Some(&l), Some(1), |_| l.full_tat(0), |k| u64::from(k == "b"));
        assert_eq!(pick.picked, vec![0, 3, 5]);
        // The second "a" meets the cap first; the second job without a key finds no token.
        assert_eq!((pick.held, pick.held_by, pick.retry_ms), (3, Some(HeldBy::InFlightPerKey), Some(100)));
        let mut buckets = pick.buckets.clone();
        buckets.sort();
        assert_eq!(
            buckets,
            vec![(None, 100_000_000), (Some("a".into()), 100_000_000), (Some("c".into()), 100_000_000)]
        );
        // The cap holds within one pick; no rate limit: only the cap counts.
        let pick = pick_by_key(&keys, 10, 0, None, Some(1), |_| 0, |_| 0);
        assert_eq!(pick.picked, vec![0, 2, 3, 4, 5]);
        assert_eq!((pick.held_by, pick.retry_ms), (Some(HeldBy::InFlightPerKey), None));
        assert_eq!(pick_by_key(&keys, 2, 0, None, None, |_| 0, |_| 0).picked, vec![0, 1]);
    }

    #[test]
    fn key_by_parses_and_prints() {
        assert_eq!("ordering_key".parse::<KeyBy>(), Ok(KeyBy::OrderingKey));
        assert_eq!("header:account".parse::<KeyBy>(), Ok(KeyBy::Header("account".into())));
        assert_eq!(KeyBy::Header("account".into()).to_string(), "header:account");
        for bad in ["", "ordering", "header:", "Header:x", &format!("header:{}", "x".repeat(HEADER_NAME_LEN_MAX + 1))] {
            assert!(
                matches!(bad.parse::<KeyBy>(), Err(Error::InvalidRequest(m)) if m.contains("rate_limit_by")),
                "{bad}"
            );
        }
        let json = serde_json::to_string(&KeyBy::Header("a b".into())).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json, r#""header:a b""#);
        assert_eq!(serde_json::from_str::<KeyBy>(&json).ok(), Some(KeyBy::Header("a b".into())));
        match serde_json::from_str::<KeyBy>(r#""per_key""#) {
            Err(e) => assert!(e.to_string().contains("rate_limit_by"), "{e}"),
            Ok(by) => panic!("parsed {by}"),
        }
        match serde_json::from_str::<KeyBy>("7") {
            Err(e) => assert!(e.to_string().contains("rate_limit_by"), "{e}"),
            Ok(by) => panic!("parsed {by}"),
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
