//! What the tests that run the Python client share (`tests/python_client.rs`,
//! `tests/verify_external.rs`): the repository, python3, running a command to success, and the
//! client's virtual environment under this crate's test scratch directory.
//!
//! The venv is made once and remade only when the package it was made for changes: its
//! `pyproject.toml`, or its directory (the package is installed editable, so source changes need
//! no reinstall, but a venv made for another checkout's package, sharing this target directory,
//! would run that checkout's sources).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// How to get what these tests need.
pub const PYTHON_INSTALL: &str =
    "install Python 3.9 or newer with its venv module (Debian: apt-get install python3 python3-venv)";

/// The repository's root.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// python3 on PATH; fails the test with how to install it when there is none.
pub fn python3() -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("python3"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("python3 not found on PATH: {PYTHON_INSTALL}"))
}

/// Runs `command`, failing the test with its output unless it succeeds.
pub fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot start it: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Python client's venv, with `clients/python[test]` installed editable; returns its python.
pub fn python_venv() -> PathBuf {
    let package = repository().join("clients/python");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-client-venv");
    let python = dir.join("bin/python");
    let stamp = dir.join("onceq-package");
    let pyproject = package.join("pyproject.toml");
    let pyproject = std::fs::read(&pyproject).unwrap_or_else(|e| panic!("{}: {e}", pyproject.display()));
    let canonical = std::fs::canonicalize(&package).unwrap_or_else(|e| panic!("{}: {e}", package.display()));
    let mut made_for = format!("{}\n", canonical.display()).into_bytes();
    made_for.extend_from_slice(&pyproject);
    if python.is_file() && std::fs::read(&stamp).ok().as_deref() == Some(made_for.as_slice()) {
        return python;
    }
    let made = Command::new(python3()).args(["-m", "venv", "--clear"]).arg(&dir).output();
    match made {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "python3 -m venv failed: {PYTHON_INSTALL}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => panic!("python3 -m venv could not start ({e}): {PYTHON_INSTALL}"),
    }
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-e"])
            .arg(format!("{}[test]", canonical.display())),
        "pip install -e clients/python[test]",
    );
    std::fs::write(&stamp, &made_for).unwrap_or_else(|e| panic!("{}: {e}", stamp.display()));
    python
}
