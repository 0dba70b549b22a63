//! `onceq verify --pipeline` end to end, through the real binary: every input of queue A becomes
//! one job in B and one in C, by a stage that commits its outputs with the ack of A (the
//! worker's `ctx.produce`) beside one that enqueues them and then acks, under every fault that
//! applies, on the embedded store, a managed server (killed with `kill -9` and restarted) and
//! PostgreSQL (connections terminated, in a fresh schema). Each run must exit 0 with the
//! committed stage at 0 outputs missing, 0 duplicated and 0 inputs lost, its lost commit replies
//! replayed; and the enqueue-then-ack stage, under a high crash-after-effect rate, must show the
//! duplicates the commit exists to prevent. With the committed stage's commit broken on purpose
//! (its outputs enqueued outside it), the same run must report its duplicates and exit 1.
//!
//! The runs take turns (one verify process at a time) and stay small (2,000 inputs per stage,
//! 1,500 on PostgreSQL) so that each takes well under a minute of a debug build on 2 cores;
//! `ONCEQ_VERIFY_JOBS` sets them all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use onceq_testkit::postgres::database_url;
use serde_json::Value;
use tokio::process::Command;

const ONCEQ: &str = env!("CARGO_BIN_EXE_onceq");

fn jobs(default: u64) -> String {
    std::env::var("ONCEQ_VERIFY_JOBS").unwrap_or_else(|_| default.to_string())
}

/// Runs `onceq verify --pipeline <args> --json --quiet` to its end, one run at a time.
async fn verify(args: &[&str]) -> Output {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut command = Command::new(ONCEQ);
    command.args(["verify", "--pipeline"]).args(args).args(["--json", "--quiet"]).kill_on_drop(true);
    for var in ["ONCEQ_TOKEN", "ONCEQ_STORE", "ONCEQ_DATA_DIR", "ONCEQ_LOG_FORMAT"] {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "error");
    match tokio::time::timeout(Duration::from_secs(300), command.output()).await {
        Ok(output) => output.expect("run onceq verify"),
        Err(_) => panic!("onceq verify --pipeline {args:?} did not finish within 5 minutes"),
    }
}

/// The stages of a run's JSON, by name.
fn stages(output: &Output) -> BTreeMap<String, Value> {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}):\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr))
    });
    assert_eq!(json["promises_kept"], Value::Bool(output.status.success()), "{json:#}");
    json["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| (s["stage"].as_str().expect("stage").to_owned(), s.clone()))
        .collect()
}

/// How often each fault fired in `stage`, from the summary on stderr.
fn faults_fired(output: &Output, stage: &str) -> BTreeMap<String, u64> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("{stage}: queues ")))
        .unwrap_or_else(|| panic!("no summary line for {stage} in stderr:\n{stderr}"));
    let fired = line.split("faults fired: ").nth(1).expect("faults fired");
    fired
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, n)| (name.to_owned(), n.parse().expect("a count")))
        .collect()
}

fn figure(stage: &Value, name: &str) -> u64 {
    stage[name].as_u64().unwrap_or_else(|| panic!("no figure {name} in {stage}"))
}

/// What every run must show: exit 0; both stages drained every input and lost none; the
/// committed stage made each output exactly once and replayed its lost commit replies; the
/// faults named fired in both stages. Returns the stages.
fn assert_committed_exactly_once(output: &Output, inputs_min: u64, faults: &[&str]) -> BTreeMap<String, Value> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stages = stages(output);
    assert!(output.status.success(), "exit {:?}, stages {stages:#?}\nstderr:\n{stderr}", output.status);
    assert_eq!(stages.keys().collect::<Vec<_>>(), ["committed", "enqueue-then-ack"], "{stages:#?}");
    assert!(!stderr.contains("NOT drained"), "{stderr}");
    for (name, stage) in &stages {
        assert!(figure(stage, "inputs") >= inputs_min, "{name}: {stage:#}");
        assert_eq!(figure(stage, "settled") + figure(stage, "dead"), figure(stage, "inputs"), "{name}: {stage:#}");
        for zero in ["lost", "outputs_missing", "unexpected"] {
            assert_eq!(figure(stage, zero), 0, "{name}: {zero} in {stage:#}");
        }
        let fired = faults_fired(output, name);
        for fault in faults {
            assert!(fired.get(*fault).is_some_and(|n| *n > 0), "{name}: {fault} never fired: {fired:?}");
        }
    }
    let committed = &stages["committed"];
    assert_eq!(figure(committed, "outputs_duplicated"), 0, "{committed:#}");
    assert_eq!(committed["violations"], Value::Array(vec![]), "{committed:#}");
    assert!(
        figure(committed, "commits_replayed") > 0,
        "lost commit replies are sent again and replayed: {committed:#}"
    );
    stages
}

#[tokio::test]
async fn embedded_committed_stage_makes_each_output_once_and_enqueue_then_ack_duplicates() {
    let jobs = jobs(2_000);
    let output = verify(&["--all-faults", "--fault", "crash-after-effect=0.2", "--seed", "21", "--jobs", &jobs]).await;
    let faults = ["crash-after-effect", "crash-mid-handler", "stall", "drop-ack", "duplicate-enqueue"];
    let stages = assert_committed_exactly_once(&output, jobs.parse().unwrap(), &faults);
    // The contrast: each crash after the enqueues and before the ack makes B and C again.
    let naive = &stages["enqueue-then-ack"];
    let crashes = faults_fired(&output, "enqueue-then-ack")["crash-after-effect"];
    assert!(figure(naive, "outputs_duplicated") >= crashes, "{crashes} crashes after the enqueues: {naive:#}");
    assert!(naive["violations"].as_array().expect("violations").is_empty(), "duplicates are no failure: {naive:#}");
}

#[tokio::test]
async fn a_managed_server_killed_with_kill_9_still_commits_each_output_once() {
    let jobs = jobs(2_000);
    let output =
        verify(&["--managed-server", "--all-faults", "--fault", "server-kill=0.6", "--seed", "22", "--jobs", &jobs])
            .await;
    let faults = ["crash-after-effect", "stall", "drop-ack", "server-kill"];
    let stages = assert_committed_exactly_once(&output, jobs.parse().unwrap(), &faults);
    assert!(figure(&stages["enqueue-then-ack"], "outputs_duplicated") > 0, "{stages:#?}");
}

#[tokio::test]
async fn postgres_with_dropped_connections_still_commits_each_output_once() {
    let jobs = jobs(1_500);
    let url = database_url();
    let output =
        verify(&["--store", &url, "--all-faults", "--fault", "pg-drop=0.7", "--seed", "23", "--jobs", &jobs]).await;
    let faults = ["crash-after-effect", "stall", "drop-ack", "pg-drop"];
    let stages = assert_committed_exactly_once(&output, jobs.parse().unwrap(), &faults);
    assert!(figure(&stages["enqueue-then-ack"], "outputs_duplicated") > 0, "{stages:#?}");
    // The fresh schema is gone.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let schema = stderr
        .split("schema ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == ';').next())
        .unwrap_or_else(|| panic!("no schema in the summary:\n{stderr}"))
        .to_owned();
    assert!(schema.starts_with("onceq_verify_"), "{schema}");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
    let left: Option<(String,)> = sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE nspname = $1")
        .bind(&schema)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, None, "verify drops the fresh schema it made");
}

/// Verify is not blind to the committed row: with the commit broken on purpose (the committed
/// stage's handler enqueues its outputs outside the commit, which then acks alone), each crash
/// after the handler makes B and C twice, and verify reports it and exits 1.
#[tokio::test]
async fn a_broken_commit_is_caught_and_verify_exits_1() {
    let jobs = jobs(1_000);
    let output =
        verify(&["--fault", "crash-after-effect=0.2", "--break-commit-for-tests", "--seed", "24", "--jobs", &jobs])
            .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    let stages = stages(&output);
    let committed = &stages["committed"];
    assert!(figure(committed, "outputs_duplicated") > 0, "{committed:#}");
    assert_eq!(figure(committed, "outputs_missing"), 0, "{committed:#}");
    let violations = committed["violations"].as_array().expect("violations");
    assert!(violations.iter().any(|v| v.as_str().is_some_and(|v| v.contains("outputs duplicated"))), "{committed:#}");
    assert!(stderr.contains("promise broken: committed"), "{stderr}");
    let naive = &stages["enqueue-then-ack"];
    assert!(naive["violations"].as_array().expect("violations").is_empty(), "{naive:#}");
}
