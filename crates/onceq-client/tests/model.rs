//! Proves that the HTTP client, talking to a real `onceq serve` router over TCP, follows the
//! reference model in `onceq_testkit::model` op by op, as the stores behind it do: random
//! sequences of enqueues, leases, settles with live, stale and forged tokens, clock advances,
//! redrives, purges, pages, pauses, queue deletes, and commits (replayed, conflicting, fenced,
//! refused for stale leases, with checkpoints) with producer registrations, on an unordered
//! queue and on a `per_key` one. What it adds to the embedded store's model test is the wire:
//! every outcome and error (`lease_lost` with its jobs, `conflict`, `fenced`) read back through
//! JSON.
//!
//! Each case gets its own server: an embedded store in a temporary directory on the case's
//! manual clock, the router on an ephemeral loopback port, and a client of it. Cases default to
//! 32 per test (each case is a few hundred requests; a run takes seconds); set `ONCEQ_MODEL_CASES`
//! for more.

use std::sync::Arc;

use onceq_client::Client;
use onceq_core::{Clock, ManualClock, QueueConfig, Store};
use onceq_server::Auth;
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_testkit::model::{check_against_config, model_config, ops, ordered_case, Op};
use proptest::prelude::*;

/// Cases per run: `ONCEQ_MODEL_CASES`, else 32.
fn cases() -> u32 {
    std::env::var("ONCEQ_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

/// Runs `ops` through a client of a fresh server, judged by a manual clock, on a queue created
/// with `config`.
fn run(config: &QueueConfig, ops: &[Op]) -> Result<(), String> {
    let dir = tempfile::TempDir::new().map_err(|e| format!("temporary directory: {e}"))?;
    let clock = ManualClock::at_default_start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let result = runtime.block_on(async {
        let store = SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock.clone() as Arc<dyn Clock>))
            .map_err(|e| format!("open: {e:?}"))?;
        let store = Arc::new(store);
        let router = onceq_server::router(Arc::clone(&store) as Arc<dyn Store>, Auth::disabled());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| format!("cannot listen: {e}"))?;
        let address = listener.local_addr().map_err(|e| format!("no local address: {e}"))?;
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let client = Client::new(format!("http://{address}")).map_err(|e| format!("client: {e:?}"))?;
        let result = check_against_config(&client, &clock, config, ops).await;
        // The server goes before the store closes, and the store before its directory.
        server.abort();
        let _ = server.await;
        store.close().await;
        result
    });
    drop(dir);
    result
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn model_state_machine_matches_the_client(ops in ops()) {
        if let Err(mismatch) = run(&model_config(), &ops) {
            return Err(TestCaseError::fail(mismatch));
        }
    }

    #[test]
    fn ordered_model_state_machine_matches_the_client((config, ops) in ordered_case()) {
        if let Err(mismatch) = run(&config, &ops) {
            return Err(TestCaseError::fail(mismatch));
        }
    }
}
