//! Proves the relay's metrics: published and publish failures by sink (and failure kind),
//! parked by reason, and the backlog gauges (pending, lag, parked), read back from a real
//! Prometheus recorder after a relay round against a real HTTP endpoint and an SQLite outbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use metrics_exporter_prometheus::PrometheusBuilder;
use onceq_outbox::metrics as names;
use onceq_outbox::{sqlite, Message, Relay, RelayOptions, WebhookSink};

/// The value of the sample of `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .find(|line| labels.iter().all(|l| line.contains(l)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn the_relay_counts_published_failed_and_parked_messages() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    // The recorder is this thread's, and the runtime runs every task on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shop.db");
        let mut app = rusqlite::Connection::open(&path).unwrap();
        sqlite::migrate(&app).unwrap();
        let tx = app.transaction().unwrap();
        for destination in ["ok", "ok", "refused", "flaky", "later"] {
            sqlite::stage(&tx, &Message::new(destination, destination)).unwrap();
        }
        tx.commit().unwrap();
        // "later" is not due for an hour: it stays pending, and shows as lag.
        app.execute(
            "UPDATE onceq_outbox_messages SET next_attempt_at = next_attempt_at + 3600000, \
             created_at = created_at - 5000 WHERE destination = 'later'",
            [],
        )
        .unwrap();
        let endpoint = Endpoint::start(200).await;
        endpoint.answer_path("/hooks/refused", 422);
        endpoint.answer_path("/hooks/flaky", 503);
        let sink = WebhookSink::new(&endpoint.url(), Duration::from_secs(5)).unwrap();
        let options = RelayOptions { max_attempts: 1, ..RelayOptions::default() };
        let relay = Relay::sqlite(&path, Arc::new(sink), options).await.unwrap();
        let report = relay.run_round().await.unwrap();
        assert_eq!((report.sent, report.parked), (2, 2), "{report:?}");
        let backlog = relay.update_gauges().await.unwrap();
        assert_eq!((backlog.pending, backlog.parked), (1, 2));
        assert!(backlog.oldest_pending_age_ms.unwrap() >= 5000, "{backlog:?}");
    });
    let text = handle.render();
    let outbox = "outbox=\"shop\"";
    assert_eq!(sample(&text, names::PUBLISHED, &[outbox, "sink=\"webhook\""]), Some(2.0), "{text}");
    assert_eq!(sample(&text, names::PUBLISH_FAILURES, &["kind=\"permanent\""]), Some(1.0), "{text}");
    assert_eq!(sample(&text, names::PUBLISH_FAILURES, &["kind=\"transient\""]), Some(1.0), "{text}");
    assert_eq!(sample(&text, names::PARKED, &["reason=\"permanent\""]), Some(1.0), "{text}");
    assert_eq!(sample(&text, names::PARKED, &["reason=\"attempts_exhausted\""]), Some(1.0), "{text}");
    assert_eq!(sample(&text, names::PENDING, &[outbox]), Some(1.0), "{text}");
    assert_eq!(sample(&text, names::PARKED_NOW, &[outbox]), Some(2.0), "{text}");
    let lag = sample(&text, names::LAG, &[outbox]).unwrap();
    assert!((5.0..60.0).contains(&lag), "lag {lag}\n{text}");
}
