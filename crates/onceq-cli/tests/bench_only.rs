//! `onceq bench --only`: the binary runs just the scenarios asked for, and refuses one that the
//! chosen bench does not have, naming those it has. A tiny run (relaxed durability, 300 jobs, one
//! round) on a temporary data directory: this checks what runs, not how fast.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn bench(args: &[&str], data_dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_onceq"))
        .arg("bench")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "error")
        .output()
        .unwrap()
}

#[test]
fn only_the_asked_scenarios_run_and_only_their_targets_are_judged() {
    let dir = tempfile::tempdir().unwrap();
    let args =
        ["--durability", "relaxed", "--jobs", "300", "--rounds", "1", "--only", "enqueue-batched,lease-ack-batched"];
    let output = bench(&args, dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("enqueue ") || l.starts_with("end-to-end ") || l.starts_with("lease+ack "))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[0].starts_with("enqueue 100/call, 1 producer"), "{stdout}");
    assert!(rows[1].starts_with("lease+ack 100/call, 300 ready at start"), "{stdout}");
    assert!(stdout.contains("batched ≥ 70% of its floor: enqueue 100/call"), "{stdout}");
    assert!(!stdout.contains("end-to-end 1/call with"), "{stdout}");
    assert!(stdout.contains("skipped lease+ack behind a big backlog"), "{stdout}");
    // Nothing is left behind in the data directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_scenario_the_bench_does_not_have_is_refused_with_the_ones_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let output = bench(&["--only", "lease-ack-single"], dir.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--only lease-ack-single: the embedded bench has no such scenario"), "{stderr}");
    assert!(stderr.contains("enqueue-1, enqueue-concurrent, enqueue-batched"), "{stderr}");
    let output = bench(&["--quick", "--only", "lease-ack-backlog"], dir.path());
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--only lease-ack-backlog needs a backlog"), "{stderr}");
    let output = bench(&["--only", "no-such-thing"], dir.path());
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn the_mixed_durability_scenario_reports_a_paced_and_an_unbounded_neighbour() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--durability", "fsync", "--jobs", "300", "--rounds", "1", "--only", "durability-mixed"];
    let output = bench(&args, dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<&str> =
        stdout.lines().filter(|l| l.starts_with("fsync e2e ") || l.starts_with("relaxed queue ")).collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    assert!(rows[0].starts_with("fsync e2e 100/call beside relaxed 10,000/s"), "{stdout}");
    assert!(rows[1].starts_with("fsync e2e 100/call beside unbounded relaxed"), "{stdout}");
    assert!(rows[2].starts_with("relaxed queue e2e 100/call"), "{stdout}");
    assert!(stdout.contains("target: fsync queue beside a busy relaxed queue >= 90% of it alone: "), "{stdout}");
    assert!(stdout.contains("target: both queues' jobs/s together >= 90% of the fsync queue alone: "), "{stdout}");
    assert_eq!(stdout.matches("relaxed neighbour jobs/s by round: ").count(), 2, "{stdout}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn the_latency_bench_reports_each_offered_load_and_judges_the_target_at_half() {
    let dir = tempfile::tempdir().unwrap();
    let output = bench(&["--latency", "--quick", "--durability", "fsync"], dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("latency, open loop (embedded, durability fsync)"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("maximum ") && l.contains(" jobs/s (closed loop")), "{stdout}");
    for load in ["10%", "50%", "80%"] {
        let row = stdout.lines().find(|l| l.starts_with(load)).unwrap_or_else(|| panic!("no {load} row: {stdout}"));
        // offered/s, acked/s, p50, p99, p99.9, max, measured, the generator's lateness: every figure is there.
        assert_eq!(row.split_whitespace().count(), 9, "{row}");
    }
    assert!(stdout.contains("targets (embedded, durability fsync, 50% load):"), "{stdout}");
    assert!(stdout.contains(" p50 < 1 ms: ") && stdout.contains(" p99 < 5 ms: "), "{stdout}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    let refused = bench(&["--latency", "--only", "enqueue-batched"], dir.path());
    assert_eq!(refused.status.code(), Some(2), "--latency measures latency only");
}
