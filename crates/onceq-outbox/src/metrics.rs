//! Names of the metrics the relay emits through the `metrics` facade (docs/design.md,
//! "Observability"). Without an installed recorder they cost nothing; `onceq relay
//! --metrics-listen` serves them in the Prometheus text format.

/// Gauge: messages staged and not yet sent or parked; label `outbox`.
pub const PENDING: &str = "onceq_outbox_pending";
/// Gauge: age of the oldest pending message, in seconds (the relay's lag; 0 when none);
/// label `outbox`.
pub const LAG: &str = "onceq_outbox_lag_seconds";
/// Gauge: messages parked in the outbox dead letters; label `outbox`.
pub const PARKED_NOW: &str = "onceq_outbox_dead_letters";
/// Counter: messages a sink confirmed; labels `outbox`, `sink` (the sink's kind).
pub const PUBLISHED: &str = "onceq_outbox_published_total";
/// Counter: publish attempts that failed; labels `outbox`, `sink`, `kind` (`transient` or
/// `permanent`).
pub const PUBLISH_FAILURES: &str = "onceq_outbox_publish_failures_total";
/// Counter: messages parked in the dead letters; labels `outbox`, `sink`, `reason`
/// (`attempts_exhausted` or `permanent`).
pub const PARKED: &str = "onceq_outbox_parked_total";
/// Histogram (seconds): how long one publish took, confirmed or not; labels `outbox`, `sink`.
pub const PUBLISH_DURATION: &str = "onceq_outbox_publish_duration_seconds";

/// Registers the descriptions (Prometheus `HELP` lines) with the installed recorder.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(PENDING, "Outbox messages staged and not yet sent or parked.");
    describe_gauge!(LAG, Unit::Seconds, "Age of the oldest pending outbox message.");
    describe_gauge!(PARKED_NOW, "Outbox messages parked in the dead letters.");
    describe_counter!(PUBLISHED, "Outbox messages a sink confirmed.");
    describe_counter!(PUBLISH_FAILURES, "Outbox publish attempts that failed, by kind.");
    describe_counter!(PARKED, "Outbox messages parked in the dead letters, by reason.");
    describe_histogram!(PUBLISH_DURATION, Unit::Seconds, "Time of one publish.");
}
