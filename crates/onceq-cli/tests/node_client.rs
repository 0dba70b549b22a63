//! The Node.js client (`clients/node`) passes its own tests against this build of `onceq serve`:
//! its client, worker, effectively-once helper, Express middleware and the shared scenarios
//! (`clients/scenarios`), run by Node's test runner with `ONCEQ_BIN` set to the binary under test.
//!
//! Needs Node.js 20 or newer and npm; a machine without them fails here, saying how to install
//! them. `npm ci` runs only when `node_modules` is missing or `package-lock.json` changed since it
//! last ran (a copy of the lock file it installed is kept in `node_modules`), so a warm run is the
//! TypeScript build and the tests: a few seconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The oldest Node.js major version the package supports (its built-in fetch and test runner).
const NODE_MAJOR_MIN: u32 = 20;
/// Where `npm ci` leaves a copy of the lock file it installed from.
const INSTALLED_LOCK: &str = "node_modules/.onceq-installed-package-lock.json";

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/node")
}

/// Runs `program args` in `dir` with `env`, failing the test with its output when it fails.
fn run(dir: &Path, program: &str, args: &[&str], env: &[(&str, &str)]) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|error| panic!("could not run {program}: {error}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// How to get what this test needs, for its failures.
const INSTALL: &str = "install Node.js 20 or newer with npm (Debian/Ubuntu: `apt-get install nodejs npm`; \
                       otherwise from your platform's packages or nodejs.org)";

/// Fails, saying how to install them, unless `node` (20 or newer) and `npm` are on PATH.
fn require_node_and_npm() {
    let output = Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|error| panic!("node was not found ({error}): {INSTALL}"));
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let major = version.trim_start_matches('v').split('.').next().and_then(|m| m.parse::<u32>().ok());
    assert!(
        major.is_some_and(|major| major >= NODE_MAJOR_MIN),
        "node {version:?} is too old or unreadable: the Node client needs {NODE_MAJOR_MIN} or newer; {INSTALL}"
    );
    // npm is a package of its own on Debian: a machine may have node without it.
    let npm = Command::new("npm").arg("--version").output();
    assert!(npm.is_ok_and(|out| out.status.success()), "npm was not found: {INSTALL}");
}

#[test]
fn node_client_tests_pass_against_this_build() {
    require_node_and_npm();
    let dir = package_dir();
    let lock = std::fs::read(dir.join("package-lock.json")).expect("clients/node/package-lock.json");
    let installed = std::fs::read(dir.join(INSTALLED_LOCK)).ok();
    if installed.as_deref() != Some(lock.as_slice()) {
        run(&dir, "npm", &["ci", "--no-audit", "--no-fund"], &[]);
        std::fs::write(dir.join(INSTALLED_LOCK), &lock).expect("record the installed lock file");
    }
    run(&dir, "npm", &["run", "--silent", "build"], &[]);
    let mut tests: Vec<String> = std::fs::read_dir(dir.join("test"))
        .expect("clients/node/test")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".test.mjs"))
        .map(|name| format!("test/{name}"))
        .collect();
    tests.sort();
    assert!(!tests.is_empty(), "no clients/node/test/*.test.mjs found");
    // A test that hangs fails after a minute instead of holding the suite.
    let mut args = vec!["--test", "--test-concurrency=4", "--test-timeout=60000"];
    args.extend(tests.iter().map(String::as_str));
    run(&dir, "node", &args, &[("ONCEQ_BIN", env!("CARGO_BIN_EXE_onceq"))]);
}
