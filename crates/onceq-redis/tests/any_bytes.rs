//! Owners, fingerprints and results holding any bytes (the record format's own separators, NUL,
//! non-UTF-8 results) and results of the largest allowed size round-trip exactly.

// A panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod local_redis;

use onceq_core::idempotency::RESULT_BYTES_MAX;
use onceq_core::{Begin, BeginOutcome, Complete, Error, IdempotencyStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_round_trips_byte_for_byte() {
    let prefix = local_redis::unique_prefix();
    let _guard = local_redis::PrefixGuard { prefix: prefix.clone() };
    let store = local_redis::connect(&prefix, None).await;

    let owner = "w|1|2||\u{0}é";
    let fingerprint = "1|p|9||x|";
    let with = |owner: &str, fingerprint: &str| Begin {
        key: "k|1|".into(),
        owner: owner.into(),
        ttl_ms: 60_000,
        fingerprint: Some(fingerprint.into()),
    };
    assert_eq!(store.idempotency_begin(with(owner, fingerprint)).await, Ok(BeginOutcome::Acquired));
    let Ok(BeginOutcome::InProgress { owner: holder, .. }) = store.idempotency_begin(with("w2", fingerprint)).await
    else {
        panic!("expected the key in progress");
    };
    assert_eq!(holder, owner);
    // A fingerprint that is a prefix of the stored one still differs.
    let shorter = store.idempotency_begin(with("w2", "1|p|9||x")).await;
    assert!(matches!(shorter, Err(Error::Conflict(_))), "{shorter:?}");

    let result: Vec<u8> = (0..=255u8).cycle().take(RESULT_BYTES_MAX).collect();
    let complete = Complete { key: "k|1|".into(), owner: owner.into(), result: result.clone(), retention_ms: 60_000 };
    store.idempotency_complete(complete).await.unwrap();
    assert_eq!(store.idempotency_begin(with("w3", fingerprint)).await, Ok(BeginOutcome::Completed { result }));

    // An empty result is a result.
    let empty = Begin { key: "empty".into(), owner: "w1".into(), ttl_ms: 1000, fingerprint: None };
    store.idempotency_begin(empty.clone()).await.unwrap();
    let complete = Complete { key: "empty".into(), owner: "w1".into(), result: Vec::new(), retention_ms: 60_000 };
    store.idempotency_complete(complete).await.unwrap();
    assert_eq!(store.idempotency_begin(empty).await, Ok(BeginOutcome::Completed { result: Vec::new() }));
}
