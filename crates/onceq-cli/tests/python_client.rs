//! Runs the Python client's tests (`clients/python/tests`, pytest) against this build's `onceq`
//! binary: the client over the whole HTTP API, the shared scenarios, the worker (heartbeats,
//! cancellation, deadline, retry, SIGTERM), the effectively-once decorator, and outbox staging
//! through the real `onceq relay` on SQLite and PostgreSQL.
//!
//! The tests run in a virtual environment under this crate's test scratch directory, made once
//! and refreshed only when `clients/python/pyproject.toml` changes (the package is installed
//! editable, so source changes need no reinstall). A machine without python3 or its venv module
//! fails here with how to install them.

use std::path::{Path, PathBuf};
use std::process::Command;

const ONCEQ: &str = env!("CARGO_BIN_EXE_onceq");
const INSTALL: &str = "install Python 3.9 or newer with its venv module (Debian: apt-get install python3 python3-venv)";

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python3() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("python3"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("python3 not found on PATH: {INSTALL}"))
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot start it: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The venv's python, made (or remade) when the package's pyproject.toml changed since.
fn venv(package: &Path) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-client-venv");
    let python = dir.join("bin/python");
    let stamp = dir.join("onceq-pyproject.toml");
    let pyproject = std::fs::read(package.join("pyproject.toml"))
        .unwrap_or_else(|e| panic!("{}: {e}", package.join("pyproject.toml").display()));
    if python.is_file() && std::fs::read(&stamp).ok().as_deref() == Some(pyproject.as_slice()) {
        return python;
    }
    let made = Command::new(python3()).args(["-m", "venv", "--clear"]).arg(&dir).output();
    match made {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 -m venv failed: {INSTALL}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("python3 -m venv could not start ({e}): {INSTALL}"),
    }
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e"])
            .arg(format!("{}[test]", package.display())),
        "pip install -e clients/python[test]",
    );
    std::fs::write(&stamp, &pyproject).unwrap_or_else(|e| panic!("{}: {e}", stamp.display()));
    python
}

#[test]
fn the_python_client_passes_its_tests_against_this_build() {
    let package = repository().join("clients/python");
    let python = venv(&package);
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
