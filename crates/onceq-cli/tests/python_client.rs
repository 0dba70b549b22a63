//! Runs the Python client's tests (`clients/python/tests`, pytest) against this build's `onceq`
//! binary: the client over the whole HTTP API, the shared scenarios, the worker (heartbeats,
//! cancellation, deadline, retry, SIGTERM), the effectively-once decorator, and outbox staging
//! through the real `onceq relay` on SQLite and PostgreSQL.
//!
//! The tests run in a virtual environment under this crate's test scratch directory, made once
//! and refreshed only when the package changes (`tests/python_common`). A machine without
//! python3 or its venv module fails here with how to install them.

mod python_common;

use std::process::Command;

use python_common::{python_venv, repository};

const ONCEQ: &str = env!("CARGO_BIN_EXE_onceq");

#[test]
fn the_python_client_passes_its_tests_against_this_build() {
    let package = repository().join("clients/python");
    let python = python_venv();
    let output = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"])
        .current_dir(&package)
        .env("ONCEQ_BIN", ONCEQ)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot start pytest: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the Python client's tests failed ({}): see the output above", output.status);
    assert!(stdout.contains(" passed"), "pytest ran no test:\n{stdout}");
}
