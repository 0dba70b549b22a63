//! Time: the [`Timestamp`] type and the store's one [`Clock`] (Invariant 7).

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time: milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The timestamp `millis` milliseconds after the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Timestamp(millis)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// This timestamp plus `ms` milliseconds, saturating.
    pub fn plus_ms(self, ms: u64) -> Self {
        Timestamp(self.0.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)))
    }

    /// Milliseconds from `earlier` to `self`; zero when `earlier` is later.
    pub fn ms_since(self, earlier: Timestamp) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// A callback a clock runs when its time jumps forward by itself (see [`Clock::on_advance`]).
pub type AdvanceCallback = Box<dyn Fn() + Send + Sync>;

/// The one clock that judges lease expiry and `run_at` in a store (Invariant 7).
///
/// Worker clocks never decide. A store holds exactly one clock; every comparison it makes
/// against "now" reads this clock.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time. Never earlier than a value returned before.
    fn now(&self) -> Timestamp;

    /// Registers `callback` to run whenever time jumps forward without real time passing
    /// (a [`ManualClock`] being advanced), so a store sleeping until a deadline can re-check.
    /// Real clocks need not call it: the store's own timers cover them.
    fn on_advance(&self, callback: AdvanceCallback) {
        let _ = callback;
    }
}

/// Wall-clock time that never goes backwards: a step back of the system clock (NTP) is held at
/// the last value read until real time catches up.
#[derive(Debug, Default)]
pub struct SystemClock {
    /// Highest value handed out so far.
    floor: AtomicI64,
}

impl SystemClock {
    /// A system clock that will never return a value below `floor` (for instance the last time
    /// a store recorded before it was closed).
    pub fn with_floor(floor: Timestamp) -> Self {
        SystemClock { floor: AtomicI64::new(floor.as_millis()) }
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let previous = self.floor.fetch_max(wall, Ordering::AcqRel);
        Timestamp(previous.max(wall))
    }
}

/// A clock that moves only when told: for tests and model checking.
pub struct ManualClock {
    /// Current time in milliseconds since the epoch.
    now: AtomicI64,
    /// Stores to poke when time advances, so their timers re-check what became due.
    callbacks: Mutex<Vec<AdvanceCallback>>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock").field("now", &self.now()).finish()
    }
}

impl ManualClock {
    /// A manual clock standing at `start`.
    pub fn new(start: Timestamp) -> Arc<Self> {
        Arc::new(ManualClock { now: AtomicI64::new(start.as_millis()), callbacks: Mutex::new(Vec::new()) })
    }

    /// A manual clock standing at 2026-01-01T00:00:00Z.
    pub fn at_default_start() -> Arc<Self> {
        Self::new(Timestamp::from_millis(1_767_225_600_000))
    }

    /// Moves time forward by `ms` milliseconds and pokes every registered store.
    pub fn advance(&self, ms: u64) {
        let delta = i64::try_from(ms).unwrap_or(i64::MAX);
        let _ = self.now.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.saturating_add(delta)));
        let callbacks = self.callbacks.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for callback in callbacks.iter() {
            callback();
        }
    }

    /// Moves time back by `ms` milliseconds: a clock that jumps back (a database server's clock
    /// set back, a machine restored from a snapshot), for the tests that prove nothing is done
    /// twice after one. It breaks the [`Clock`] promise on purpose; stores must survive it.
    pub fn rewind(&self, ms: u64) {
        let delta = i64::try_from(ms).unwrap_or(i64::MAX);
        let _ = self.now.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(t.saturating_sub(delta)));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.now.load(Ordering::Acquire))
    }

    fn on_advance(&self, callback: AdvanceCallback) {
        self.callbacks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(callback);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_never_goes_below_its_floor() {
        let far_future = Timestamp::from_millis(i64::MAX / 2);
        let clock = SystemClock::with_floor(far_future);
        assert_eq!(clock.now(), far_future);
    }

    #[test]
    fn manual_clock_advances_and_calls_back() {
        let clock = ManualClock::new(Timestamp::from_millis(1000));
        let hits = Arc::new(AtomicI64::new(0));
        let seen = hits.clone();
        clock.on_advance(Box::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        clock.advance(250);
        assert_eq!(clock.now(), Timestamp::from_millis(1250));
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn timestamp_arithmetic_saturates() {
        assert_eq!(Timestamp::from_millis(i64::MAX - 1).plus_ms(u64::MAX), Timestamp::from_millis(i64::MAX));
        assert_eq!(Timestamp::from_millis(5).ms_since(Timestamp::from_millis(9)), 0);
        assert_eq!(Timestamp::from_millis(9).ms_since(Timestamp::from_millis(5)), 4);
    }
}
