//! The lease adviser: warns about a queue whose handlers hold their leases for most of the
//! visibility timeout, the most common way users get duplicate deliveries (a handler that
//! outlives its lease has its job leased again while it still runs).
//!
//! It watches the lease-to-ack times this process records (`onceq_lease_to_ack_seconds`, through
//! [`Advising`], a recorder that tees that histogram's samples here), keeps each queue's last
//! [`SAMPLES_MAX`] within [`SAMPLE_AGE_MAX`], and advises when their P99 is above
//! [`THRESHOLD_PERCENT`] of the queue's `visibility_timeout_ms`. The advice shows in
//! `GET /v1/queues/{queue}` (`advice`), as the gauge `onceq_queue_advice{queue, advice}`, and as
//! a warning in the log at most once a minute per queue. What it sees is what this process acked:
//! on PostgreSQL with several servers, each advises from its own acks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use onceq_core::metrics as names;
use onceq_core::QueueInfo;
use serde::Serialize;

/// Samples kept per queue: the P99 is of the last this many acks.
pub(crate) const SAMPLES_MAX: usize = 100;
/// Fewest samples the adviser judges from.
pub(crate) const SAMPLES_MIN: usize = 5;
/// Samples older than this are forgotten.
pub(crate) const SAMPLE_AGE_MAX: Duration = Duration::from_secs(600);
/// Advice is given when the P99 hold is above this share of the visibility timeout.
pub(crate) const THRESHOLD_PERCENT: u64 = 80;
/// The log repeats a queue's advice at most this often.
const LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Most queues watched: the ones acked most recently are kept.
const QUEUES_MAX: usize = 10_000;

/// One piece of advice about a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Advice {
    /// What it is about: `lease_timeout`.
    pub kind: &'static str,
    /// What was seen, its likely effect and what to do.
    pub message: String,
}

/// A queue's recent lease-to-ack times, in milliseconds.
#[derive(Default)]
struct Window {
    samples: VecDeque<(Instant, u64)>,
    logged_at: Option<Instant>,
}

/// Every watched queue's window, by name.
fn windows() -> &'static Mutex<HashMap<String, Window>> {
    static WINDOWS: OnceLock<Mutex<HashMap<String, Window>>> = OnceLock::new();
    WINDOWS.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Records that a job of `queue` was acked `held_seconds` after its lease.
pub(crate) fn observe(queue: &str, held_seconds: f64) {
    let held_ms = (held_seconds * 1000.0).max(0.0) as u64;
    let now = Instant::now();
    let mut windows = windows().lock().unwrap_or_else(|p| p.into_inner());
    if !windows.contains_key(queue) && windows.len() >= QUEUES_MAX {
        // Forget the queue acked longest ago.
        let oldest =
            windows.iter().min_by_key(|(_, w)| w.samples.back().map(|(at, _)| *at)).map(|(name, _)| name.clone());
        if let Some(name) = oldest {
            windows.remove(&name);
        }
    }
    // A lookup first: the name is copied only for a queue seen the first time.
    if !windows.contains_key(queue) {
        windows.insert(queue.to_owned(), Window::default());
    }
    let Some(window) = windows.get_mut(queue) else { return };
    if window.samples.len() == SAMPLES_MAX {
        window.samples.pop_front();
    }
    window.samples.push_back((now, held_ms));
}

/// The P99 (nearest rank) of `queue`'s recent lease-to-ack times, in milliseconds, and how many
/// samples it is of; `None` with fewer than [`SAMPLES_MIN`].
fn p99(window: &mut Window, now: Instant) -> Option<(u64, usize)> {
    while window.samples.front().is_some_and(|(at, _)| now.duration_since(*at) > SAMPLE_AGE_MAX) {
        window.samples.pop_front();
    }
    let mut held: Vec<u64> = window.samples.iter().map(|(_, ms)| *ms).collect();
    if held.len() < SAMPLES_MIN {
        return None;
    }
    held.sort_unstable();
    let rank = (held.len() * 99).div_ceil(100);
    Some((held[rank.saturating_sub(1)], held.len()))
}

/// The advice about `info`'s queue now; logs it (at most once a minute per queue) and sets the
/// queue's advice gauge.
pub(crate) fn advise(info: &QueueInfo) -> Vec<Advice> {
    let now = Instant::now();
    let timeout_ms = info.config.visibility_timeout_ms;
    let mut advice = Vec::new();
    {
        let mut windows = windows().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(window) = windows.get_mut(info.name.as_str()) {
            if let Some((p99_ms, samples)) = p99(window, now) {
                if p99_ms.saturating_mul(100) > timeout_ms.saturating_mul(THRESHOLD_PERCENT) {
                    let percent = p99_ms.saturating_mul(100) / timeout_ms.max(1);
                    let message = format!(
                        "the P99 time from lease to ack of the last {samples} jobs is {p99_ms} ms, {percent}% of the \
                         queue's visibility timeout ({timeout_ms} ms): a handler that runs past its lease has its \
                         job delivered again while it still runs (duplicate deliveries). Raise visibility_timeout_ms \
                         above the slowest handler, or extend the lease while the handler runs (heartbeats)"
                    );
                    let log_due = window.logged_at.is_none_or(|at| now.duration_since(at) >= LOG_INTERVAL);
                    if log_due {
                        window.logged_at = Some(now);
                        tracing::warn!(queue = %info.name, p99_ms, timeout_ms, "lease adviser: {message}");
                    }
                    advice.push(Advice { kind: "lease_timeout", message });
                }
            }
        }
    }
    metrics::gauge!(names::QUEUE_ADVICE, "queue" => info.name.to_string(), "advice" => "lease_timeout")
        .set(if advice.is_empty() { 0.0 } else { 1.0 });
    advice
}

/// A recorder that hands every lease-to-ack sample to the adviser as well as to `R`.
pub(crate) struct Advising<R>(pub(crate) R);

impl<R: Recorder> Recorder for Advising<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.0.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let inner = self.0.register_histogram(key, metadata);
        if key.name() != names::LEASE_TO_ACK {
            return inner;
        }
        match key.labels().find(|label| label.key() == "queue") {
            Some(label) => Histogram::from_arc(Arc::new(Tee { inner, queue: label.value().to_owned() })),
            None => inner,
        }
    }
}

/// The lease-to-ack histogram of one queue, seen by the adviser too.
struct Tee {
    inner: Histogram,
    queue: String,
}

impl HistogramFn for Tee {
    fn record(&self, value: f64) {
        self.inner.record(value);
        observe(&self.queue, value);
    }
}

/// `GET /v1/queues/{queue}`: the queue's config and stats, and the adviser's advice.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdvisedQueue {
    /// The queue.
    #[serde(flatten)]
    pub info: QueueInfo,
    /// What the lease adviser sees wrong with it (empty when nothing).
    pub advice: Vec<Advice>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p99_is_of_the_recent_samples_only() {
        let now = Instant::now();
        let mut window = Window::default();
        for ms in [10, 20, 30, 40] {
            window.samples.push_back((now, ms));
        }
        assert_eq!(p99(&mut window, now), None, "too few samples");
        window.samples.push_back((now, 900));
        assert_eq!(p99(&mut window, now), Some((900, 5)));
        for _ in 0..95 {
            window.samples.push_back((now, 5));
        }
        assert_eq!(p99(&mut window, now), Some((40, 100)), "one slow ack in a hundred is the 1%");
        let later = now + SAMPLE_AGE_MAX + Duration::from_secs(1);
        assert_eq!(p99(&mut window, later), None, "old samples are forgotten");
    }
}
