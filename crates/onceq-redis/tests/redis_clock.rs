//! Without a test clock, Redis's own clock judges every claim and retention (Invariant 7): a
//! claim taken by the plain `SET NX PX` path reports the `until` Redis computed, claims and
//! results expire in real time, and a holder whose claim ran out can still complete it when
//! nobody took it over.

// A panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod local_redis;

use std::time::Duration;

use onceq_core::{Begin, BeginOutcome, Complete, Error, IdempotencyStore, Timestamp};

fn begin(key: &str, owner: &str, ttl_ms: u64) -> Begin {
    Begin { key: key.into(), owner: owner.into(), ttl_ms, fingerprint: None }
}

fn complete(key: &str, owner: &str, result: &[u8], retention_ms: u64) -> Complete {
    Complete { key: key.into(), owner: owner.into(), result: result.to_vec(), retention_ms }
}

/// How far Redis's cached command time may trail its TIME, in milliseconds.
const REDIS_CACHED_CLOCK_LAG_MS: i64 = 5;

/// Redis's clock, in milliseconds since the epoch.
async fn redis_now() -> Timestamp {
    let (seconds, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut local_redis::raw().await).await.unwrap();
    Timestamp::from_millis(seconds * 1000 + micros / 1000)
}

#[tokio::test]
async fn claims_report_the_until_redis_computed() {
    let prefix = local_redis::unique_prefix();
    let _guard = local_redis::PrefixGuard { prefix: prefix.clone() };
    let store = local_redis::connect(&prefix, None).await;

    let before = redis_now().await;
    assert_eq!(store.idempotency_begin(begin("k", "w1", 60_000)).await, Ok(BeginOutcome::Acquired));
    let after = redis_now().await;
    let Ok(BeginOutcome::InProgress { owner, until }) = store.idempotency_begin(begin("k", "w2", 1000)).await else {
        panic!("expected the key in progress under w1");
    };
    assert_eq!(owner, "w1");
    // Redis reads its clock for a command from a snapshot it caches per event-loop pass, which
    // can trail a TIME answered just before on another connection by a millisecond or two: the
    // lower bound allows that much (seen: 1 ms).
    let lowest = Timestamp::from_millis(before.as_millis() - REDIS_CACHED_CLOCK_LAG_MS);
    assert!(
        lowest.plus_ms(60_000) <= until && until <= after.plus_ms(60_000),
        "until {until} outside [{}, {}]",
        lowest.plus_ms(60_000),
        after.plus_ms(60_000)
    );

    // The holder again (the script path, judged by TIME): the claim moves.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = redis_now().await;
    assert_eq!(store.idempotency_begin(begin("k", "w1", 120_000)).await, Ok(BeginOutcome::Acquired));
    let after = redis_now().await;
    let Ok(BeginOutcome::InProgress { until, .. }) = store.idempotency_begin(begin("k", "w2", 1000)).await else {
        panic!("expected the key in progress under w1");
    };
    assert!(before.plus_ms(120_000) <= until && until <= after.plus_ms(120_000), "until {until}");
}

#[tokio::test]
async fn claims_expire_in_real_time_and_can_be_taken_over() {
    let prefix = local_redis::unique_prefix();
    let _guard = local_redis::PrefixGuard { prefix: prefix.clone() };
    let store = local_redis::connect(&prefix, None).await;

    store.idempotency_begin(begin("k", "w1", 200)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.idempotency_begin(begin("k", "w2", 60_000)).await, Ok(BeginOutcome::Acquired));
    let late = store.idempotency_complete(complete("k", "w1", b"late", 60_000)).await;
    assert!(matches!(late, Err(Error::Conflict(_))), "{late:?}");
    store.idempotency_complete(complete("k", "w2", b"w2", 60_000)).await.unwrap();
    assert_eq!(
        store.idempotency_begin(begin("k", "w1", 1000)).await,
        Ok(BeginOutcome::Completed { result: b"w2".to_vec() })
    );
}

#[tokio::test]
async fn an_expired_claim_nobody_took_can_still_be_completed() {
    let prefix = local_redis::unique_prefix();
    let _guard = local_redis::PrefixGuard { prefix: prefix.clone() };
    let store = local_redis::connect(&prefix, None).await;

    store.idempotency_begin(begin("k", "w1", 200)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    store.idempotency_complete(complete("k", "w1", b"slow but done", 60_000)).await.unwrap();
    assert_eq!(
        store.idempotency_begin(begin("k", "w2", 1000)).await,
        Ok(BeginOutcome::Completed { result: b"slow but done".to_vec() })
    );
}

#[tokio::test]
async fn a_completed_record_expires_with_its_retention() {
    let prefix = local_redis::unique_prefix();
    let _guard = local_redis::PrefixGuard { prefix: prefix.clone() };
    let store = local_redis::connect(&prefix, None).await;

    store.idempotency_begin(begin("k", "w1", 60_000)).await.unwrap();
    store.idempotency_complete(complete("k", "w1", b"r", 300)).await.unwrap();
    assert_eq!(
        store.idempotency_begin(begin("k", "w2", 1000)).await,
        Ok(BeginOutcome::Completed { result: b"r".to_vec() })
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(store.idempotency_begin(begin("k", "w2", 1000)).await, Ok(BeginOutcome::Acquired));
}
