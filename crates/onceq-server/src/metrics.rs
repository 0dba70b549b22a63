//! `/metrics`: Prometheus text, from the `metrics` facade.
//!
//! Counters and histograms are recorded where the events happen (the store's writer emits
//! enqueued, duplicates suppressed, deliveries, redeliveries by reason, stale-lease rejections,
//! extensions, acks, dead-lettered, redriven, and the latency histograms). Gauges of queue depth
//! by state, the oldest ready job's age and the members of each consumer group are read from the
//! store at each scrape.

use std::collections::HashSet;
use std::sync::OnceLock;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use onceq_core::metrics as names;
use onceq_core::Store;

use crate::error::ApiError;
use crate::state::AppState;

/// Histogram buckets, in seconds: from a millisecond to an hour.
const BUCKETS_SECONDS: &[f64] =
    &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed on first use. `None` if another recorder was
/// installed first (then `/metrics` says so).
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS_SECONDS)
                .ok()?;
            // The lease adviser (`advice`) sees every lease-to-ack sample through the recorder.
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(crate::advice::Advising(recorder)) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot install the Prometheus recorder; /metrics will be unavailable");
                    None
                }
            }
        })
        .clone()
}

/// The HELP lines of `/metrics`.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(names::ENQUEUED, "Jobs created by enqueues (duplicates excluded).");
    describe_gauge!(
        names::QUEUE_ADVICE,
        "1 while the lease adviser advises on the queue (lease_timeout: leases held for most of the visibility timeout)."
    );
    describe_counter!(names::DUPLICATES_SUPPRESSED, "Enqueues absorbed by producer dedup.");
    describe_counter!(names::DELIVERIES, "Jobs handed out by leases, every attempt.");
    describe_counter!(names::REDELIVERIES, "Jobs made available for another attempt, by reason.");
    describe_counter!(
        names::STALE_LEASE_REJECTIONS,
        "Settle calls refused: not the job's current lease, or no such job (then queue=\"\": the job is gone)."
    );
    describe_counter!(names::LEASE_EXTENSIONS, "Lease extensions.");
    describe_counter!(names::ACKS, "Acks.");
    describe_counter!(names::DEAD_LETTERED, "Jobs dead-lettered, by reason (the DLQ ingestion velocity).");
    describe_counter!(names::REDRIVEN, "Dead jobs made ready again.");
    describe_counter!(names::JOBS_CANCELLED, "Jobs that ended cancelled.");
    describe_counter!(names::JOBS_DELETED, "Jobs deleted by an operator.");
    describe_histogram!(names::ENQUEUE_TO_LEASE, Unit::Seconds, "Time from enqueue to first lease.");
    describe_histogram!(names::LEASE_TO_ACK, Unit::Seconds, "Time from lease to ack.");
    describe_gauge!(names::QUEUE_DEPTH, "Jobs by state.");
    describe_gauge!(names::OLDEST_READY_AGE, Unit::Seconds, "Age of the oldest ready job.");
    describe_gauge!(names::QUEUE_PAUSED, "1 when the queue is paused.");
    describe_counter!(names::GROUP_REBALANCES, "Rebalances of a consumer group (membership changes).");
    describe_counter!(
        names::GROUP_PARTITIONS_MOVED,
        "Partitions handed from one member to another (or from a departed one)."
    );
    describe_counter!(names::GROUP_MEMBERS_EXPIRED, "Members removed because they missed their session timeout.");
    describe_histogram!(
        names::GROUP_PARTITION_IDLE,
        Unit::Seconds,
        "How long a handed-over partition had no owner that may lease from it."
    );
    describe_gauge!(names::GROUP_MEMBERS, "Members of a consumer group.");
    describe_counter!(
        names::COMMITS,
        "Commits by outcome (applied, replayed, lease_lost, fenced, conflict, invalid, error)."
    );
    describe_counter!(names::PRODUCER_FENCED, "Commits and enqueues of a producer refused: a newer epoch registered.");
    describe_counter!(names::PRODUCER_REGISTRATIONS, "Registrations of a producer (each fences the older epochs).");
    // Flow limits.
    describe_counter!(
        names::FLOW_HELD_BACK,
        "Jobs a lease found ready but a limit held back, by limit (rate, in_flight, rate_per_key, in_flight_per_key)."
    );
    describe_histogram!(names::FLOW_WAIT, Unit::Seconds, "How long long-poll leases waited for a flow limit.");
    describe_counter!(names::MAX_DEPTH_REFUSALS, "Enqueues and commits refused whole by the queue's max_depth.");
    describe_gauge!(
        names::PARTITION_OLDEST_READY_AGE,
        Unit::Seconds,
        "Age of the oldest ready job of each partition of a grouped queue."
    );
}

/// Counters labelled only by `queue`, shown at 0 for every known queue before its first event.
const QUEUE_COUNTERS: &[&str] = &[
    names::ENQUEUED,
    names::DUPLICATES_SUPPRESSED,
    names::DELIVERIES,
    names::STALE_LEASE_REJECTIONS,
    names::LEASE_EXTENSIONS,
    names::ACKS,
    names::REDRIVEN,
    names::JOBS_CANCELLED,
    names::JOBS_DELETED,
    names::MAX_DEPTH_REFUSALS,
];

/// Counters labelled by `queue` and one more label, with every value that label takes.
const QUEUE_COUNTERS_BY: &[(&str, &str, &[&str])] = &[
    (names::REDELIVERIES, "reason", &["nack", "lease_expired", "released"]),
    (names::DEAD_LETTERED, "reason", &["attempts_exhausted", "failed", "killed"]),
    (names::FLOW_HELD_BACK, "limit", &["rate", "in_flight", "rate_per_key", "in_flight_per_key"]),
];

/// Histograms labelled only by `queue`, shown empty for every known queue before its first event.
const QUEUE_HISTOGRAMS: &[&str] = &[names::ENQUEUE_TO_LEASE, names::LEASE_TO_ACK];

/// Registers the counters and histograms of `queue` that have not seen an event yet, so that
/// they read 0 (a dashboard or alert sees a zero, not a gap), without changing any that have.
fn register_queue_series(queue: &str) {
    for name in QUEUE_COUNTERS {
        metrics::counter!(*name, "queue" => queue.to_owned()).increment(0);
    }
    for (name, label, values) in QUEUE_COUNTERS_BY {
        for value in *values {
            metrics::counter!(*name, "queue" => queue.to_owned(), *label => *value).increment(0);
        }
    }
    for name in QUEUE_HISTOGRAMS {
        // Registered without a sample: rendered with every bucket, the count and the sum at 0.
        drop(metrics::histogram!(*name, "queue" => queue.to_owned()));
    }
}

/// `text` without the sample lines of queues that are not in `known`: the exporter keeps every
/// series it ever saw and cannot remove one, so a deleted queue's series are dropped here. The
/// `queue=""` series (stale settles of jobs that are gone) stay. Queue names are
/// `[A-Za-z0-9._-]`, so a label value never holds an escaped quote.
fn known_queues_only(text: &str, known: &HashSet<String>) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let queue = if line.starts_with('#') {
            None
        } else {
            ["{queue=\"", ",queue=\""].iter().find_map(|start| {
                let at = line.find(start)? + start.len();
                line[at..].find('"').map(|end| &line[at..at + end])
            })
        };
        match queue {
            Some(queue) if !queue.is_empty() && !known.contains(queue) => {}
            _ => out.push_str(line),
        }
    }
    out
}

/// Prometheus text of every metric, with queue depth, oldest ready age and pause state read at
/// this scrape. Every queue the store knows has its series, at 0 before its first event; a deleted
/// queue's series are gone.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
pub(crate) async fn render(State(state): State<AppState>) -> Result<Response, ApiError> {
    let handle = state.metrics.clone().ok_or_else(|| ApiError::unavailable("metrics are not being recorded"))?;
    let queues = state.store.queue_list().await?;
    let known: HashSet<String> = queues.iter().map(|queue| queue.name.to_string()).collect();
    for queue in queues {
        let name = queue.name.to_string();
        register_queue_series(&name);
        let stats = &queue.stats;
        for (label, value) in [
            ("ready", stats.ready),
            ("scheduled", stats.scheduled),
            ("leased", stats.leased),
            ("dead", stats.dead),
            ("blocked", stats.blocked),
            ("cancelled", stats.cancelled),
        ] {
            metrics::gauge!(names::QUEUE_DEPTH, "queue" => name.clone(), "state" => label).set(value as f64);
        }
        let age = stats.oldest_ready_age_ms.unwrap_or(0) as f64 / 1000.0;
        metrics::gauge!(names::OLDEST_READY_AGE, "queue" => name.clone()).set(age);
        metrics::gauge!(names::QUEUE_PAUSED, "queue" => name.clone()).set(if queue.paused { 1.0 } else { 0.0 });
        // The lease adviser's gauge (and its log line, at most once a minute).
        crate::advice::advise(&queue);
        // Only a per_key queue can have groups; asking the others would only be refused.
        if queue.config.ordering == onceq_core::Ordering::PerKey {
            let groups = match state.store.group_list(&queue.name).await {
                Ok(groups) => groups,
                // Deleted since it was listed: nothing to show.
                Err(onceq_core::Error::QueueNotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            for group in groups {
                let labels = [("queue", name.clone()), ("group", group.group.to_string())];
                metrics::gauge!(names::GROUP_MEMBERS, &labels).set(group.members.len() as f64);
                for partition in &group.partitions {
                    let labels = [
                        ("queue", name.clone()),
                        ("group", group.group.to_string()),
                        ("partition", partition.partition.to_string()),
                    ];
                    let age = partition.oldest_ready_age_ms.unwrap_or(0) as f64 / 1000.0;
                    metrics::gauge!(names::PARTITION_OLDEST_READY_AGE, &labels).set(age);
                }
            }
        }
    }
    let text = known_queues_only(&handle.render(), &known);
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

/// Serves `GET /metrics` (Prometheus text of everything this process records) and nothing else
/// on `listener` until `shutdown` completes: the metrics endpoint of a process that is not an
/// onceq server, such as `onceq relay`. Installs the Prometheus recorder if it is not yet.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let handle = handle()
        .ok_or_else(|| std::io::Error::other("another metrics recorder is installed; cannot serve /metrics"))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()) }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
