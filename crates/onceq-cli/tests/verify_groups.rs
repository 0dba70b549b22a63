//! `onceq verify-groups` end to end, through the real binary: a consumer group of member
//! processes on a stream of ordered jobs goes through joins, a `kill -9` and a graceful leave,
//! on the embedded store (one server) and on PostgreSQL (two servers, members spread over both).
//! Each run must keep per-key order, never let two runs of a key overlap, lose nothing, settle
//! every step, and move no more partitions than the minimum between the stable assignments of
//! each step. Stall times are reported, not asserted (they depend on the machine's load).
//!
//! Sizes are small (16 partitions, 500 keys, 200 jobs/s, short holds) so that each run takes
//! well under a minute of a debug build; `onceq verify-groups` with its defaults is the full
//! drill (64 partitions, 10,000 keys, 1 → 4 → 8 → 6 → 3 members).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;
use std::time::Duration;

use onceq_testkit::postgres::database_url;
use serde_json::Value;
use tokio::process::Command;

const ONCEQ: &str = env!("CARGO_BIN_EXE_onceq");

const SMALL: &[&str] = &[
    "--partitions",
    "16",
    "--keys",
    "500",
    "--rate",
    "200",
    "--steps",
    "join:3,kill:1,leave:1",
    "--warmup-s",
    "1",
    "--hold-s",
    "2",
    "--session-timeout-ms",
    "1500",
    "--visibility-timeout-ms",
    "1500",
];

/// Runs `onceq verify-groups <args> --json --quiet` to its end, one run at a time.
async fn drill(args: &[&str]) -> Output {
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut command = Command::new(ONCEQ);
    command.arg("verify-groups").args(args).args(["--json", "--quiet"]).kill_on_drop(true);
    for var in ["ONCEQ_TOKEN", "ONCEQ_STORE", "ONCEQ_DATA_DIR", "ONCEQ_LOG_FORMAT", "ONCEQ_CONFIG"] {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "error");
    match tokio::time::timeout(Duration::from_secs(300), command.output()).await {
        Ok(output) => output.expect("run onceq verify-groups"),
        Err(_) => panic!("onceq verify-groups {args:?} did not finish within 5 minutes"),
    }
}

/// Checks a run that must keep every promise; returns its report.
fn kept(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let json: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    assert_eq!(json["promise_kept"], Value::Bool(true), "{json:#}\nstderr:\n{stderr}");
    assert_eq!(output.status.code(), Some(0), "stderr:\n{stderr}");
    let report = json["report"].clone();
    let enqueued = report["enqueued"].as_u64().unwrap();
    assert!(enqueued > 500, "{report:#}");
    assert_eq!(report["completed"].as_u64(), Some(enqueued));
    for figure in ["lost", "order_violations", "concurrent_key_runs", "concurrent_key_runs_in_member"] {
        assert_eq!(report[figure].as_u64(), Some(0), "{figure}: {report:#}");
    }
    let steps = report["steps"].as_array().unwrap();
    let shape: Vec<(&str, u64, u64)> = steps
        .iter()
        .map(|s| {
            (s["kind"].as_str().unwrap(), s["members_before"].as_u64().unwrap(), s["members_after"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(shape, vec![("join", 1, 4), ("crash", 4, 3), ("leave", 3, 2)]);
    for step in steps {
        assert!(step["settled_ms"].is_number(), "{step:#}");
        let (moved, minimum) = (step["moved"].as_u64().unwrap(), step["minimum"].as_u64().unwrap());
        assert_eq!(moved, minimum, "{step:#}");
        assert!(moved > 0, "every step of this plan moves partitions: {step:#}");
        assert!(step["jobs"].as_u64().unwrap() > 0, "{step:#}");
    }
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_the_embedded_store_keeps_order_through_joins_a_kill_and_a_leave() {
    let report = kept(&drill(SMALL).await);
    eprintln!("{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_over_two_servers_on_one_postgresql_keeps_order_through_joins_a_kill_and_a_leave() {
    let url = database_url();
    let mut args = SMALL.to_vec();
    args.extend(["--store", &url, "--servers", "2"]);
    let report = kept(&drill(&args).await);
    eprintln!("{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_drill_options_are_refused_before_anything_starts() {
    for (args, says) in [
        (&["--servers", "2"][..], "--store postgres"),
        (&["--steps", "leave:1"][..], "keep at least one"),
        (&["--steps", "swap:2"][..], "unknown step"),
        (&["--store", "mysql://x"][..], "postgres://"),
    ] {
        let output = drill(args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
