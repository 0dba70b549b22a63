//! Proves that the embedded store follows docs/semantics.md for one queue: random sequences of
//! enqueues (priorities, delays, dedup ids), leases, acks, nacks, extends and fails (with live,
//! stale and forged tokens), clock advances across every timeout, redrives, purges, dead-letter
//! pages and pauses give, op by op, the outcomes and observations of the reference model in
//! `onceq_testkit::model`; so do commits (settles and enqueues all or nothing, replayed under a
//! remembered commit id until its window ends, conflicting, fenced by a newer registration of
//! their producer, refused for stale leases, saving checkpoints) and producer registrations. A second test does the same on a `per_key` queue (docs/semantics.md,
//! "Ordering per key"): jobs of three ordering keys block behind their heads and move on as heads
//! are acked, die (with and without `dead_blocks_key`), are redriven and purged, while the
//! queue's config changes mid-run.
//!
//! Cases default to 64 per test (a CI run stays well under a minute); set `ONCEQ_MODEL_CASES` for
//! more.

use std::sync::Arc;

use onceq_core::{Clock, ManualClock, QueueConfig};
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_testkit::model::{check_against_config, model_config, ops, ordered_case, Op};
use proptest::prelude::*;

/// Cases per run: `ONCEQ_MODEL_CASES`, else 64.
fn cases() -> u32 {
    std::env::var("ONCEQ_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
}

/// Runs `ops` against a fresh embedded store in a temporary directory, judged by a manual clock,
/// on a queue created with `config`.
fn run(config: &QueueConfig, ops: &[Op]) -> Result<(), String> {
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
        let result = check_against_config(&store, &clock, config, ops).await;
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
        if let Err(mismatch) = run(&model_config(), &ops) {
            return Err(TestCaseError::fail(mismatch));
        }
    }

    #[test]
    fn ordered_model_state_machine_matches_the_store((config, ops) in ordered_case()) {
        if let Err(mismatch) = run(&config, &ops) {
            return Err(TestCaseError::fail(mismatch));
        }
    }
}
