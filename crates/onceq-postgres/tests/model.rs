//! Proves that the PostgreSQL store follows docs/semantics.md for one queue: random sequences of
//! enqueues (priorities, delays, dedup ids), leases, acks, nacks, extends, fails and releases
//! (with live, stale and forged tokens), clock advances across every timeout, redrives, purges,
//! dead-letter pages, pauses and queue deletes give, op by op, the outcomes and observations of
//! the reference model in `onceq_testkit::model`; so do commits (settles and enqueues all or
//! nothing, replayed under a remembered commit id until its window ends, conflicting, fenced by a
//! newer registration of their producer, refused for stale leases, saving checkpoints) and
//! producer registrations. A second test does the same on a `per_key`
//! queue (docs/semantics.md, "Ordering per key"): jobs of three ordering keys block behind their
//! heads and move on as heads are acked, die (with and without `dead_blocks_key`), are redriven
//! and purged, while the queue's config changes mid-run.
//!
//! Cases default to 32 per test (each runs in a fresh schema, so that keeps the crate's tests well
//! under a minute; 400 unordered cases pass too); set `ONCEQ_MODEL_CASES` for more.

mod common;

use std::sync::Arc;

use onceq_core::{Clock, ManualClock, QueueConfig};
use onceq_testkit::model::{check_against_config, model_config, ops, ordered_case, Op};
use proptest::prelude::*;

/// Cases per run: `ONCEQ_MODEL_CASES`, else 32.
fn cases() -> u32 {
    std::env::var("ONCEQ_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

/// Runs `ops` against a store in a fresh schema, judged by a manual clock, on a queue created
/// with `config`.
fn run(config: &QueueConfig, ops: &[Op]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let clock = ManualClock::at_default_start();
    let (store, guard) = runtime.block_on(common::fresh_store(Some(clock.clone() as Arc<dyn Clock>)));
    let result = runtime.block_on(async {
        let result = check_against_config(&store, &clock, config, ops).await;
        store.close().await;
        result
    });
    drop(guard);
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
