//! Proves that the embedded store follows docs/semantics.md for one queue: random sequences of
//! enqueues (priorities, delays, dedup ids), leases, acks, nacks, extends and fails (with live,
//! stale and forged tokens), clock advances across every timeout, redrives, purges, dead-letter
//! pages and pauses give, op by op, the outcomes and observations of the reference model in
//! `onceq_testkit::model`.
//!
//! Cases default to 64 (a CI run stays well under a minute); set `ONCEQ_MODEL_CASES` for more.

use std::sync::Arc;

use onceq_core::{Clock, ManualClock};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_testkit::model::{check_against, ops};
use proptest::prelude::*;

/// Cases per run: `ONCEQ_MODEL_CASES`, else 64.
fn cases() -> u32 {
    std::env::var("ONCEQ_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

/// Runs `ops` against a fresh embedded store in a temporary directory, judged by a manual clock.
fn run(ops: &[onceq_testkit::model::Op]) -> Result<(), String> {
    let dir = tempfile::TempDir::new().map_err(|e| format!("temporary directory: {e}"))?;
    let clock = ManualClock::at_default_start();
    let mut options = SqliteOptions::new(dir.path());
    options.clock = Some(clock.clone() as Arc<dyn Clock>);
    let store = SqliteStore::open(options).map_err(|e| format!("open: {e:?}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let result = runtime.block_on(async {
        let result = check_against(&store, &clock, ops).await;
        // The writer lets go of the directory before the directory goes.
        store.close().await;
        result
    });
    drop(dir);
    result
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn model_state_machine_matches_the_store(ops in ops()) {
        if let Err(mismatch) = run(&ops) {
            return Err(TestCaseError::fail(mismatch));
        }
    }
}
