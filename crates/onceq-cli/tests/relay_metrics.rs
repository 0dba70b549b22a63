//! `onceq relay --metrics-listen`: the relay process serves its metrics in Prometheus text.
//!
//! A SQLite outbox holds one staged message for a webhook that is not listening, so every publish
//! fails: the scrape must show the message pending and the failures counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ONCEQ: &str = env!("CARGO_BIN_EXE_onceq");

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn the_relay_serves_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        onceq_outbox::sqlite::migrate(&conn).unwrap();
        let tx = conn.transaction().unwrap();
        onceq_outbox::sqlite::stage(&tx, &onceq_outbox::Message::new("hook", b"{}".to_vec())).unwrap();
        tx.commit().unwrap();
    }
    let (metrics_port, dead_port) = (free_port(), free_port());
    let mut relay = Command::new(ONCEQ)
        .args(["relay", "--outbox", &format!("sqlite:{}", db.display())])
        .args(["--sink", &format!("http://127.0.0.1:{dead_port}/"), "--backoff-initial-ms", "50"])
        .args(["--backoff-max-ms", "100", "--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        // Enough attempts (at most 100 ms apart) that the message is still pending at the first
        // scrape, however slowly this machine starts the relay: with the default 10 it could be
        // parked already (seen in CI: 8 failures and pending 0 by the first scrape).
        .args(["--max-attempts", "1000"])
        .env_remove("ONCEQ_OUTBOX_FAILPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let scraped = match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => response.text().await.ok(),
            _ => None,
        };
        if let Some(text) =
            scraped.filter(|t| t.contains("onceq_outbox_publish_failures_total") && t.contains("onceq_outbox_pending"))
        {
            break text;
        }
        assert!(Instant::now() < deadline, "no outbox metrics at {url} within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let pending = text
        .lines()
        .find(|l| l.starts_with("onceq_outbox_pending"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(pending, Some(1.0), "{text}");
    let status = Command::new("kill").args(["-TERM", &relay.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = relay.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(relay.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(exit.success(), "relay exited with {exit}: {stderr}");
    assert!(stderr.contains(&format!("metrics on http://127.0.0.1:{metrics_port}/metrics")), "{stderr}");
}
