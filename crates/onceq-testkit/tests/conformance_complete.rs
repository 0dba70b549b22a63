//! Proves that every backend runs every conformance function: each `pub async fn` of the
//! conformance source files is in the list that `conformance_suite!` (and `idempotency_suite!`)
//! expands, under the area of the file that defines it, and the list names nothing else.
//!
//! A function left out of the list compiles, and no backend runs it: nothing else would notice.
//! The sources are read at test time, so a new area file is checked as soon as it exists.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every `pub async fn` name in `source`, in order.
fn public_async_fns(source: &str) -> Vec<String> {
    const MARK: &str = "pub async fn ";
    let mut names = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(MARK) {
        rest = &rest[at + MARK.len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        assert!(!name.is_empty(), "a `pub async fn` without a name near: {}", &rest[..rest.len().min(80)]);
        names.push(name);
    }
    names
}

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Compares the functions found in the sources with the list a suite macro runs; the failure
/// names each function that is missing from the list and each listed name that has no function.
fn assert_complete(suite: &str, found: &BTreeSet<(String, String)>, listed: &[(&str, &str)], dir: &str, list_at: &str) {
    let listed_set: BTreeSet<(String, String)> =
        listed.iter().map(|(a, n)| ((*a).to_owned(), (*n).to_owned())).collect();
    assert_eq!(listed_set.len(), listed.len(), "{suite}: the list names a function twice: {listed:?}");
    let missing: Vec<String> =
        found.difference(&listed_set).map(|(area, name)| format!("{area}::{name} (src/{dir}{area}.rs)")).collect();
    let unknown: Vec<String> = listed_set.difference(found).map(|(area, name)| format!("{area}::{name}")).collect();
    assert!(
        missing.is_empty(),
        "{suite}: these conformance functions are not in the list the macro runs, so no backend runs them: \
         {missing:?}. Add each under its area in the list in {list_at}."
    );
    assert!(unknown.is_empty(), "{suite}: the list in {list_at} names functions that do not exist: {unknown:?}");
}

#[test]
fn every_conformance_function_is_in_the_suite() {
    let dir = source_dir().join("conformance");
    let mut found = BTreeSet::new();
    let mut areas = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        if path.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let names = public_async_fns(&read(&path));
        if stem == "mod" {
            // The shared fixture lives there; a conformance function belongs to an area file.
            assert_eq!(names, Vec::<String>::new(), "src/conformance/mod.rs: move these to an area file");
            continue;
        }
        areas += 1;
        found.extend(names.into_iter().map(|name| (stem.to_owned(), name)));
    }
    assert!(
        areas >= 2 && found.len() >= 50,
        "found only {} functions in {areas} files of {}",
        found.len(),
        dir.display()
    );
    assert_complete(
        "conformance_suite!",
        &found,
        onceq_testkit::conformance::SUITE,
        "conformance/",
        "src/conformance/mod.rs",
    );
}

#[test]
fn every_idempotency_conformance_function_is_in_the_suite() {
    let found: BTreeSet<(String, String)> = public_async_fns(&read(&source_dir().join("idempotency.rs")))
        .into_iter()
        .map(|name| ("idempotency".to_owned(), name))
        .collect();
    assert!(found.len() >= 10, "found only {found:?}");
    let listed: Vec<(&str, &str)> =
        onceq_testkit::idempotency::SUITE.iter().map(|name| ("idempotency", *name)).collect();
    assert_complete("idempotency_suite!", &found, &listed, "", "src/idempotency.rs");
}

#[test]
fn every_inspect_conformance_function_is_in_the_suite() {
    let found: BTreeSet<(String, String)> = public_async_fns(&read(&source_dir().join("inspect.rs")))
        .into_iter()
        .map(|name| ("inspect".to_owned(), name))
        .collect();
    assert!(found.len() >= 2, "found only {found:?}");
    let listed: Vec<(&str, &str)> = onceq_testkit::inspect::SUITE.iter().map(|name| ("inspect", *name)).collect();
    assert_complete("inspect_suite!", &found, &listed, "", "src/inspect.rs");
}
