//! `onceq verify --worker-cmd` checks the Python and the Node client's workers, as separate
//! processes, with the same checker as the Rust worker: in `effectively_once`, under
//! crash-after-effect, crash-mid-handler, stall and drop-ack, each worker loses no job and
//! applies no effect twice, and every one of those faults fired (the crashes as real process
//! exits, which verify counts and restarts). A worker whose effectively-once gate is off
//! (`ONCEQ_VERIFY_BROKEN_GATE`, set by `--break-gate-for-tests`) must be reported with duplicate
//! effects and exit 1, so these checks can fail.
//!
//! The Python package runs from the virtual environment the Python client's test makes (the
//! same directory and refresh rule); the Node package is built with `npm ci` (when its lock
//! changed) and `npm run build`, as the Node client's test does. A machine without python3 (and
//! venv) or Node.js 20 and npm fails here saying how to install them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod python_common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use python_common::{python_venv, repository, run};
use serde_json::Value;

const ONCEQ: &str = env!("CARGO_BIN_EXE_onceq");
const NODE_INSTALL: &str = "install Node.js 20 or newer with npm (Debian/Ubuntu: `apt-get install nodejs npm`; \
                            otherwise from your platform's packages or nodejs.org)";
/// The oldest Node.js major version the package supports.
const NODE_MAJOR_MIN: u32 = 20;
/// Where `npm ci` leaves a copy of the lock file it installed from (as the Node client's test).
const INSTALLED_LOCK: &str = "node_modules/.onceq-installed-package-lock.json";
/// Jobs per run that must keep the promise: enough for every fault to fire at the rates below.
const JOBS: u64 = 1_000;
/// The four faults, at rates that make each fire a dozen times or more in such a run.
const FAULTS: [&str; 4] = ["crash-after-effect=0.02", "crash-mid-handler=0.02", "stall=0.01", "drop-ack=0.03"];
/// Jobs of a run with the gate broken: a few crashes after the effect are enough.
const BROKEN_JOBS: u64 = 300;
/// The one fault of a run with the gate broken.
const BROKEN_FAULT: &str = "crash-after-effect=0.05";

/// Builds the Node package (as tests/node_client.rs does) and returns its verify worker.
fn node_worker() -> PathBuf {
    let output = Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|error| panic!("node was not found ({error}): {NODE_INSTALL}"));
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let major = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse::<u32>().ok());
    assert!(
        major.is_some_and(|major| major >= NODE_MAJOR_MIN),
        "node {version:?} is too old or unreadable: the Node client needs {NODE_MAJOR_MIN} or newer; {NODE_INSTALL}"
    );
    let npm = Command::new("npm").arg("--version").output();
    assert!(npm.is_ok_and(|out| out.status.success()), "npm was not found: {NODE_INSTALL}");
    let dir = repository().join("clients/node");
    let lock = std::fs::read(dir.join("package-lock.json")).expect("clients/node/package-lock.json");
    if std::fs::read(dir.join(INSTALLED_LOCK)).ok().as_deref() != Some(lock.as_slice()) {
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&dir), "npm ci");
        std::fs::write(dir.join(INSTALLED_LOCK), &lock).expect("record the installed lock file");
    }
    run(Command::new("npm").args(["run", "--silent", "build"]).current_dir(&dir), "npm run build");
    dir.join("dist/verify-worker.js")
}

/// The command line of a shell word: single-quoted.
fn quoted(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Runs `onceq verify` on the embedded store with `worker` as the external worker (4 processes
/// of 4 handlers each: a crash takes down few deliveries beside its own), in effectively_once,
/// under the four faults; with the gate broken, under crash-after-effect only.
fn verify(worker: &str, seed: u64, broken: bool) -> Output {
    // One run at a time, so that the runs' timing does not depend on each other.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut command = Command::new(ONCEQ);
    let jobs = if broken { BROKEN_JOBS } else { JOBS };
    command.args(["verify", "--modes", "effectively_once", "--jobs", &jobs.to_string(), "--workers", "4"]);
    command.args(["--lease-batch", "4", "--drain-timeout-s", "300", "--seed", &seed.to_string()]);
    command.args(["--json", "--quiet", "--worker-cmd", worker]);
    if broken {
        command.args(["--fault", BROKEN_FAULT, "--break-gate-for-tests"]);
    } else {
        for fault in FAULTS {
            command.args(["--fault", fault]);
        }
    }
    for var in ["ONCEQ_TOKEN", "ONCEQ_STORE", "ONCEQ_DATA_DIR", "ONCEQ_LOG_FORMAT"] {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "error").env("PYTHONDONTWRITEBYTECODE", "1");
    command.output().expect("run onceq verify")
}

/// The effectively_once report of a run, and whether verify said every promise was kept.
fn report(output: &Output) -> (bool, Value) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("stdout is not JSON ({e}):\n{stdout}\nstderr:\n{}", String::from_utf8_lossy(&output.stderr))
    });
    let kept = json["promises_kept"].as_bool().expect("promises_kept");
    let report = json["reports"].as_array().expect("reports").first().expect("one report").clone();
    assert_eq!(report["mode"], "effectively_once", "{report:#}");
    (kept, report)
}

fn figure(report: &Value, name: &str) -> u64 {
    report[name].as_u64().unwrap_or_else(|| panic!("no figure {name} in {report}"))
}

/// The summary line of the effectively_once run on stderr: the faults fired and the crash exits.
fn fired_and_exits(output: &Output) -> (BTreeMap<String, u64>, u64) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("effectively_once: queue "))
        .unwrap_or_else(|| panic!("no summary line in stderr:\n{stderr}"));
    let (fired, exits) = line
        .split("faults fired: ")
        .nth(1)
        .and_then(|rest| rest.split_once("; worker processes restarted after "))
        .unwrap_or_else(|| panic!("no faults or crash exits in {line:?}"));
    let fired = fired
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, n)| (name.to_owned(), n.parse().expect("a count")))
        .collect();
    let exits = exits.trim_end_matches(" crash exits").parse().expect("a count of crash exits");
    (fired, exits)
}

fn assert_kept(worker: &str, output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (kept, report) = report(output);
    assert!(
        output.status.success() && kept,
        "{worker}: exit {:?}, report {report:#}\nstderr:\n{stderr}",
        output.status
    );
    assert!(stderr.contains(&format!("worker: external, 4 processes of `{worker}`")), "{stderr}");
    assert_eq!(figure(&report, "enqueued"), JOBS, "{report:#}");
    assert_eq!(figure(&report, "processed"), JOBS, "every job's effect applied: {report:#}");
    for zero in ["lost", "duplicate_effects", "unexpected", "stale_acks_accepted", "overlapping_leases", "dead"] {
        assert_eq!(figure(&report, zero), 0, "{worker}: {zero} in {report:#}");
    }
    // The faults redelivered jobs, and the gate kept their effects single.
    assert!(figure(&report, "duplicate_deliveries") > 0, "{report:#}");
    let (fired, exits) = fired_and_exits(output);
    for fault in ["crash-after-effect", "crash-mid-handler", "stall", "drop-ack"] {
        assert!(fired.get(fault).is_some_and(|n| *n > 0), "{worker}: {fault} never fired: {fired:?}");
    }
    assert!(exits > 0, "{worker}: no worker process crashed: {stderr}");
}

fn assert_broken_is_caught(worker: &str, output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let (kept, report) = report(output);
    assert_eq!(output.status.code(), Some(1), "{worker}: stderr:\n{stderr}");
    assert!(!kept);
    assert!(figure(&report, "duplicate_effects") > 0, "{worker}: {report:#}");
    assert_eq!(figure(&report, "lost"), 0, "{worker}: {report:#}");
    assert!(stderr.contains("promise broken: effectively_once"), "{stderr}");
}

#[test]
fn the_python_worker_keeps_effectively_once_under_crashes_stalls_and_lost_acks() {
    let worker = format!("{} -m onceq.verify_worker", quoted(&python_venv()));
    assert_kept(&worker, &verify(&worker, 31, false));
    assert_broken_is_caught(&worker, &verify(&worker, 32, true));
}

#[test]
fn the_node_worker_keeps_effectively_once_under_crashes_stalls_and_lost_acks() {
    let worker = format!("node {}", quoted(&node_worker()));
    assert_kept(&worker, &verify(&worker, 41, false));
    assert_broken_is_caught(&worker, &verify(&worker, 42, true));
}

#[test]
fn a_worker_command_that_fails_stops_the_run_with_its_output() {
    let output = verify("sh -c 'echo no such worker here >&2; exit 3'", 1, false);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exited with exit status: 3") && stderr.contains("no such worker here"), "{stderr}");
}
