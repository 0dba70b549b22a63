//! `onceq verify` end to end, through the real binary: a short run with every fault on against the
//! embedded store, a managed server process (killed with `kill -9` and restarted), and PostgreSQL
//! (connections terminated), each of which must keep every mode's promise; and a run with a fault
//! that no separate idempotency store can guard, which must break `effectively_once`'s promise.
//!
//! Each run must also show that its faults fired and did something: at_most_once lost jobs
//! (worker crashes), at_least_once delivered and applied some twice, effectively_once delivered
//! some twice yet applied none twice; and the faults-fired line names every fault turned on.
//! Stale acks accepted, overlapping leases, unexpected values and jobs dead more than once are 0.
//! An ordered run (`--ordered`) also keeps per-key order under every fault.
//!
//! The runs take turns (one verify process at a time), so that their timing does not depend on
//! each other. Sizes, in jobs per mode: 12,000 on the embedded store, 7,000 (21,000 per run) on
//! the managed server and on PostgreSQL, so that the file stays within a few minutes of a debug
//! build on a 2-core machine; `ONCEQ_VERIFY_JOBS` sets them all (e.g. 200000 for a long run).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use onceq_testkit::postgres::database_url;
use serde_json::Value;
use tokio::process::Command;

const ONCEQ: &str = env!("CARGO_BIN_EXE_onceq");

fn jobs(default: u64) -> u64 {
    std::env::var("ONCEQ_VERIFY_JOBS").map_or(default, |v| v.parse().expect("ONCEQ_VERIFY_JOBS is a count"))
}

/// Runs `onceq verify <args> --json --quiet` to its end, one run at a time.
async fn verify(args: &[String]) -> Output {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    verify_now(args).await
}

/// Runs `onceq verify <args> --json --quiet` to its end, now.
async fn verify_now(args: &[String]) -> Output {
    let mut command = Command::new(ONCEQ);
    command.arg("verify").args(args).args(["--json", "--quiet"]).kill_on_drop(true);
    for var in ["ONCEQ_TOKEN", "ONCEQ_STORE", "ONCEQ_DATA_DIR", "ONCEQ_LOG_FORMAT"] {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "error");
    match tokio::time::timeout(Duration::from_secs(600), command.output()).await {
        Ok(output) => output.expect("run onceq verify"),
        Err(_) => panic!("onceq verify {args:?} did not finish within 10 minutes"),
    }
}

/// The reports of a run's JSON, by mode.
fn reports(output: &Output) -> (bool, BTreeMap<String, Value>) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}):\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr))
    });
    let kept = json["promises_kept"].as_bool().expect("promises_kept");
    let by_mode = json["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .map(|r| (r["mode"].as_str().expect("mode").to_owned(), r.clone()))
        .collect();
    (kept, by_mode)
}

/// How often each fault fired in `mode`, from the summary on stderr.
fn faults_fired(output: &Output, mode: &str) -> BTreeMap<String, u64> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&format!("{mode}: queue ")))
        .unwrap_or_else(|| panic!("no summary line for {mode} in stderr:\n{stderr}"));
    let fired = line.split("faults fired: ").nth(1).expect("faults fired");
    fired
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, n)| (name.to_owned(), n.parse().expect("a count")))
        .collect()
}

fn figure(report: &Value, name: &str) -> u64 {
    report[name].as_u64().unwrap_or_else(|| panic!("no figure {name} in {report}"))
}

/// The figures every mode must show after a run with every fault on, and the proof the faults
/// did something.
fn assert_promises_kept(output: &Output, jobs: u64, periodic: Option<&str>) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (kept, reports) = reports(output);
    assert!(output.status.success() && kept, "exit {:?}, reports {reports:#?}\nstderr:\n{stderr}", output.status);
    assert_eq!(reports.len(), 3, "{reports:#?}");
    for (mode, report) in &reports {
        for zero in [
            "stale_acks_accepted",
            "stale_nacks_accepted",
            "stale_extends_accepted",
            "overlapping_leases",
            "unexpected",
            "dead_more_than_once",
        ] {
            assert_eq!(figure(report, zero), 0, "{mode}: {zero} in {report:#}");
        }
        assert_eq!(figure(report, "enqueued"), jobs, "{mode}: every enqueue succeeded in the end: {report:#}");
        assert_eq!(report["violations"], Value::Array(vec![]), "{mode}");
        let fired = faults_fired(output, mode);
        assert!(fired.get("crash-mid-handler").is_some_and(|n| *n > 0), "{mode}: {fired:?}");
        assert!(fired.get("duplicate-enqueue").is_some_and(|n| *n > 0), "{mode}: {fired:?}");
        if mode != "at_most_once" {
            for fault in ["crash-after-effect", "stall", "drop-ack"] {
                assert!(fired.get(fault).is_some_and(|n| *n > 0), "{mode}: {fault} never fired: {fired:?}");
            }
        }
        if let Some(periodic) = periodic {
            if mode != "at_most_once" {
                assert!(fired.get(periodic).is_some_and(|n| *n > 0), "{mode}: {periodic} never fired: {fired:?}");
            }
        }
    }
    let most = &reports["at_most_once"];
    assert_eq!(figure(most, "duplicate_deliveries"), 0, "{most:#}");
    assert_eq!(figure(most, "duplicate_effects"), 0, "{most:#}");
    assert!(figure(most, "lost") > 0, "worker crashes lose at_most_once jobs: {most:#}");
    let least = &reports["at_least_once"];
    assert_eq!(figure(least, "lost"), 0, "{least:#}");
    assert!(figure(least, "duplicate_deliveries") > 0, "crashes redeliver: {least:#}");
    assert!(figure(least, "duplicate_effects") > 0, "crashes after the effect apply it again: {least:#}");
    let once = &reports["effectively_once"];
    assert_eq!(figure(once, "lost"), 0, "{once:#}");
    assert_eq!(figure(once, "duplicate_effects"), 0, "{once:#}");
    assert!(figure(once, "duplicate_deliveries") > 0, "crashes redeliver: {once:#}");
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test]
async fn embedded_store_keeps_every_promise_under_all_faults() {
    let jobs = jobs(12_000);
    let output = verify(&args(&["--all-faults", "--seed", "11", "--jobs", &jobs.to_string()])).await;
    assert_promises_kept(&output, jobs, None);
}

/// `--ordered`: per_key queues over 200 keys, every fault on. Each mode keeps its promise and
/// per-key order (order_violations 0); no two jobs of a key are live at once where the mode
/// promises it (concurrent_key_deliveries 0 in at_least_once and effectively_once).
#[tokio::test]
async fn an_ordered_run_keeps_per_key_order_under_all_faults() {
    let jobs = jobs(5_000);
    let output = verify(&args(&[
        "--ordered",
        "--ordered-keys",
        "200",
        "--all-faults",
        "--seed",
        "19",
        "--jobs",
        &jobs.to_string(),
    ]))
    .await;
    assert_promises_kept(&output, jobs, None);
    let (_, reports) = reports(&output);
    for (mode, report) in &reports {
        assert_eq!(figure(report, "order_violations"), 0, "{mode}: {report:#}");
        if mode != "at_most_once" {
            assert_eq!(figure(report, "concurrent_key_deliveries"), 0, "{mode}: {report:#}");
        }
    }
}

#[tokio::test]
async fn a_managed_server_killed_with_kill_9_keeps_every_promise() {
    let jobs = jobs(7_000);
    let output = verify(&args(&[
        "--managed-server",
        "--all-faults",
        "--fault",
        "server-kill=0.6",
        "--seed",
        "12",
        "--jobs",
        &jobs.to_string(),
    ]))
    .await;
    assert_promises_kept(&output, jobs, Some("server-kill"));
}

#[tokio::test]
async fn postgres_with_dropped_connections_keeps_every_promise_and_drops_its_schema() {
    let jobs = jobs(7_000);
    let output = verify(&args(&[
        "--store",
        &database_url(),
        "--all-faults",
        "--fault",
        "pg-drop=0.7",
        "--seed",
        "13",
        "--jobs",
        &jobs.to_string(),
    ]))
    .await;
    assert_promises_kept(&output, jobs, Some("pg-drop"));
    let once = faults_fired(&output, "effectively_once");
    assert!(once.get("crash-before-complete").is_some_and(|n| *n > 0), "guarded on PostgreSQL: {once:?}");
    // The fresh schema is gone.
    let stderr = String::from_utf8_lossy(&output.stderr);
    let schema = stderr
        .split("schema ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no schema in the summary:\n{stderr}"))
        .to_owned();
    assert!(schema.starts_with("onceq_verify_"), "{schema}");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url()).await.unwrap();
    let left: Option<(String,)> = sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE nspname = $1")
        .bind(&schema)
        .fetch_optional(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, None, "verify drops the fresh schema it made");
}

/// The checker is not blind: a crash between the effect and the idempotency record, with a
/// ledger outside the idempotency store's database, applies effects twice, and verify says so.
#[tokio::test]
async fn an_unguarded_crash_window_breaks_effectively_once_and_verify_exits_1() {
    let jobs = jobs(3_000);
    let output = verify(&args(&[
        "--modes",
        "effectively_once",
        "--fault",
        "crash-before-complete=0.05",
        "--seed",
        "14",
        "--jobs",
        &jobs.to_string(),
    ]))
    .await;
    let (kept, reports) = reports(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(!kept);
    let once = &reports["effectively_once"];
    assert!(figure(once, "duplicate_effects") > 0, "{once:#}");
    assert_eq!(figure(once, "lost"), 0, "{once:#}");
    assert!(!once["violations"].as_array().expect("violations").is_empty(), "{once:#}");
    assert!(String::from_utf8_lossy(&output.stderr).contains("promise broken: effectively_once"));
}

/// Verify runs the shipped worker, so it sees the worker's bugs: with the effectively-once gate
/// broken on purpose (a delivery whose effect is recorded runs again), the faults that
/// redeliver after an effect (crash after effect, lost acks, stalls) apply effects twice, and
/// verify reports it and exits 1. The same run with the gate intact keeps the promise.
#[tokio::test]
async fn a_broken_effectively_once_gate_is_caught_and_verify_exits_1() {
    let jobs = jobs(3_000);
    let run = |broken: bool| {
        let mut list = args(&["--modes", "effectively_once", "--all-faults", "--seed", "15", "--jobs"]);
        list.push(jobs.to_string());
        if broken {
            list.push("--break-gate-for-tests".into());
        }
        list
    };
    let output = verify(&run(true)).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (kept, broken) = reports(&output);
    assert_eq!(output.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(!kept);
    let once = &broken["effectively_once"];
    assert!(figure(once, "duplicate_effects") > 0, "{once:#}");
    assert_eq!(figure(once, "lost"), 0, "{once:#}");
    assert!(stderr.contains("promise broken: effectively_once"), "{stderr}");

    let intact = verify(&run(false)).await;
    let (intact_kept, intact_reports) = reports(&intact);
    assert!(intact.status.success() && intact_kept, "{intact_reports:#?}");
    assert_eq!(figure(&intact_reports["effectively_once"], "duplicate_effects"), 0);
}

#[tokio::test]
async fn bad_options_exit_2_with_a_clear_message() {
    for (bad, says) in [
        (vec!["--fault", "server-kill=0.1"], "--managed-server"),
        (vec!["--fault", "stall=7"], "from 0 to 1"),
        (vec!["--store", "mysql://x"], "postgres://"),
        (vec!["--modes", "twice"], "twice"),
    ] {
        // Refused before any run starts: no need to wait for a turn.
        let output = verify_now(&args(&bad)).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains(says), "{bad:?}: {stderr}");
    }
}

/// With two attempts, jobs whose deliveries keep crashing go dead: every one of them is in the
/// dead letters exactly once, and none counts as lost.
#[tokio::test]
async fn jobs_that_keep_failing_go_dead_exactly_once_and_are_not_lost() {
    let jobs = jobs(3_000);
    let output = verify(&args(&[
        "--max-attempts",
        "2",
        "--fault",
        "crash-mid-handler=0.3",
        "--fault",
        "crash-after-effect=0.2",
        "--fault",
        "stall=0.05",
        "--seed",
        "15",
        "--jobs",
        &jobs.to_string(),
    ]))
    .await;
    let (kept, reports) = reports(&output);
    assert!(output.status.success() && kept, "{reports:#?}\n{}", String::from_utf8_lossy(&output.stderr));
    for mode in ["at_least_once", "effectively_once"] {
        let report = &reports[mode];
        assert!(figure(report, "dead") > 0, "{mode}: {report:#}");
        assert_eq!(figure(report, "dead_more_than_once"), 0, "{mode}: {report:#}");
        assert_eq!(figure(report, "lost"), 0, "{mode}: {report:#}");
        assert_eq!(figure(report, "stale_acks_accepted"), 0, "{mode}: {report:#}");
    }
}

/// `--check` reads the histories a run wrote with `--history-out` and reports exactly what the
/// run reported; a history with one effect applied twice more breaks effectively_once's promise.
#[tokio::test]
async fn saved_histories_check_again_to_the_same_reports_and_a_tampered_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap().to_owned();
    let run = verify(&args(&[
        "--modes",
        "at_least_once,effectively_once",
        "--all-faults",
        "--seed",
        "21",
        "--jobs",
        "500",
        "--history-out",
        &out,
    ]))
    .await;
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (kept, ran) = reports(&run);
    assert!(kept);
    let files: Vec<String> = ["at_least_once", "effectively_once"]
        .iter()
        .map(|mode| dir.path().join(format!("{mode}.jsonl")).to_str().unwrap().to_owned())
        .collect();
    let mut check = args(&["--check"]);
    check.extend(files.iter().cloned());
    let again = verify(&check).await;
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(reports(&again), (true, ran.clone()));

    // One effect of effectively_once recorded twice: a duplicate effect, a broken promise.
    let text = std::fs::read_to_string(&files[1]).unwrap();
    let effect = text.lines().find(|l| l.contains("\"record\":\"effect\"")).expect("an effect line").to_owned();
    std::fs::write(&files[1], format!("{text}{effect}\n")).unwrap();
    let tampered = verify(&check).await;
    assert_eq!(tampered.status.code(), Some(1), "{}", String::from_utf8_lossy(&tampered.stderr));
    let (kept, by_mode) = reports(&tampered);
    assert!(!kept);
    let before = ran["effectively_once"]["duplicate_effects"].as_u64().unwrap();
    assert_eq!(by_mode["effectively_once"]["duplicate_effects"].as_u64(), Some(before + 1));
    assert_eq!(by_mode["at_least_once"], ran["at_least_once"]);

    // Nobody reading the report (`onceq verify --check ... | head`, closed early) changes
    // nothing: the exit status is still the verdict.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = std::process::Command::new(ONCEQ)
        .arg("verify")
        .args(&check)
        .arg("--json")
        .env("RUST_LOG", "error")
        .stdout(writer)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1), "a broken promise reported into a closed pipe");
}
