//! Every record lives in one Redis key, `<prefix>{<key>}`, whose Redis Cluster hash tag is the
//! idempotency key: whatever happens to an idempotency key touches that one key (so one slot).
//! In-progress keys outlive their claim by a day (so a slow holder can still complete), and
//! completed keys expire with their retention.

// A panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod local_redis;

use onceq_core::idempotency::TTL_MS_MAX;
use onceq_core::{Begin, BeginOutcome, Complete, IdempotencyStore};
use onceq_redis::IN_PROGRESS_GRACE_MS;

/// The part of a Redis key that picks its Cluster slot: between the first `{` and the first
/// `}` after it, when that is not empty; else the whole key (the Redis Cluster specification).
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{') {
        if let Some(close) = key[open + 1..].find('}') {
            if close > 0 {
                return &key[open + 1..open + 1 + close];
            }
        }
    }
    key
}

fn begin(key: &str, owner: &str, ttl_ms: u64) -> Begin {
    Begin { key: key.into(), owner: owner.into(), ttl_ms, fingerprint: Some("f".into()) }
}

async fn pttl(key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(&mut local_redis::raw().await).await.unwrap()
}

#[tokio::test]
async fn each_idempotency_key_is_one_hash_tagged_redis_key() {
    let prefix = local_redis::unique_prefix();
    let _guard = local_redis::PrefixGuard { prefix: prefix.clone() };
    let store = local_redis::connect(&prefix, None).await;

    for key in ["order-42", "tenant:7/invoice 9", "ключ"] {
        assert_eq!(store.idempotency_begin(begin(key, "w1", 60_000)).await, Ok(BeginOutcome::Acquired));
        assert_eq!(
            store
                .idempotency_begin(begin(key, "w2", 60_000))
                .await
                .map(|o| matches!(o, BeginOutcome::InProgress { .. })),
            Ok(true)
        );
        assert_eq!(store.idempotency_begin(begin(key, "w1", 60_000)).await, Ok(BeginOutcome::Acquired));
        let record_key = format!("{prefix}{{{key}}}");
        assert_eq!(store.record_key(key), record_key);
        assert_eq!(hash_tag(&record_key), key);
        assert_eq!(local_redis::keys_under(&format!("{prefix}{{{key}}}")).await, vec![record_key.clone()]);

        let complete = Complete { key: key.into(), owner: "w1".into(), result: b"{}".to_vec(), retention_ms: 60_000 };
        store.idempotency_complete(complete).await.unwrap();
        assert_eq!(local_redis::keys_under(&format!("{prefix}{{{key}}}")).await, vec![record_key]);
    }
    // Three idempotency keys, three Redis keys, nothing else.
    assert_eq!(local_redis::keys_under(&prefix).await.len(), 3);

    // Released keys leave nothing behind.
    store.idempotency_begin(begin("short-lived", "w1", 1000)).await.unwrap();
    store.idempotency_release("short-lived", "w1").await.unwrap();
    assert_eq!(local_redis::keys_under(&prefix).await.len(), 3);
}

#[tokio::test]
async fn a_key_holding_braces_still_maps_to_one_slot() {
    let prefix = local_redis::unique_prefix();
    let _guard = local_redis::PrefixGuard { prefix: prefix.clone() };
    let store = local_redis::connect(&prefix, None).await;

    // Redis takes the tag up to the first `}`: a part of the key, the same every time.
    let key = "a}b{c}";
    store.idempotency_begin(begin(key, "w1", 60_000)).await.unwrap();
    let keys = local_redis::keys_under(&prefix).await;
    assert_eq!(keys, vec![format!("{prefix}{{a}}b{{c}}}}")]);
    assert_eq!(hash_tag(&keys[0]), "a");
}

#[tokio::test]
async fn in_progress_keys_outlive_their_claim_and_completed_keys_their_retention_only() {
    let prefix = local_redis::unique_prefix();
    let _guard = local_redis::PrefixGuard { prefix: prefix.clone() };
    let store = local_redis::connect(&prefix, None).await;
    let record_key = store.record_key("k");

    // Acquired by the plain path (SET NX PX).
    store.idempotency_begin(begin("k", "w1", 10_000)).await.unwrap();
    let kept = pttl(&record_key).await;
    let expected = i64::try_from(10_000 + IN_PROGRESS_GRACE_MS).unwrap();
    assert!((expected - 5_000..=expected).contains(&kept), "PTTL {kept}, expected about {expected}");
    assert_eq!(IN_PROGRESS_GRACE_MS, TTL_MS_MAX);

    // Re-acquired by the holder (the script path): the key's life moves with the claim.
    store.idempotency_begin(begin("k", "w1", 20_000)).await.unwrap();
    let kept = pttl(&record_key).await;
    let expected = i64::try_from(20_000 + IN_PROGRESS_GRACE_MS).unwrap();
    assert!((expected - 5_000..=expected).contains(&kept), "PTTL {kept}, expected about {expected}");

    let complete = Complete { key: "k".into(), owner: "w1".into(), result: b"r".to_vec(), retention_ms: 30_000 };
    store.idempotency_complete(complete).await.unwrap();
    let kept = pttl(&record_key).await;
    assert!((25_000..=30_000).contains(&kept), "PTTL {kept}, expected about 30000");
}
