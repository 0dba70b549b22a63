//! A Redis value under a record key that the store did not write (another program sharing the
//! key prefix) is reported as `Error::Storage`, with what to do, and left untouched: the store
//! never panics on it and never overwrites it.

// A panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod local_redis;

use onceq_core::{Begin, Complete, Error, IdempotencyStore};

fn begin(key: &str) -> Begin {
    Begin { key: key.into(), owner: "w1".into(), ttl_ms: 60_000, fingerprint: None }
}

fn assert_storage<T: std::fmt::Debug>(result: Result<T, Error>, expected: &str) {
    let Err(Error::Storage(message)) = &result else {
        panic!("expected a storage error, got {result:?}");
    };
    assert!(message.contains(expected), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_store_did_not_write_is_a_storage_error() {
    let prefix = local_redis::unique_prefix();
    let _guard = local_redis::PrefixGuard { prefix: prefix.clone() };
    let store = local_redis::connect(&prefix, None).await;
    let mut raw = local_redis::raw().await;

    let cases: [(&str, &[u8]); 5] = [
        ("garbage", b"hello"),
        ("other-version", b"2|p|1|2||w1"),
        ("truncated", b"1|p|1767225600000|9||w1"),
        ("completed-without-until", b"1|c||2||w1done"),
        // Claimed by the plain path, but with no expiry to tell when the claim ends.
        ("in-progress-without-expiry", b"1|p||2||w1"),
    ];
    for (key, value) in cases {
        let record_key = store.record_key(key);
        redis::cmd("SET").arg(&record_key).arg(value).exec_async(&mut raw).await.unwrap();

        assert_storage(store.idempotency_begin(begin(key)).await, "is not an onceq idempotency record");
        let complete = Complete { key: key.into(), owner: "w1".into(), result: b"r".to_vec(), retention_ms: 1000 };
        assert_storage(store.idempotency_complete(complete).await, "give onceq a prefix of its own");
        assert_storage(store.idempotency_release(key, "w1").await, "is not an onceq idempotency record");

        let kept: Vec<u8> = redis::cmd("GET").arg(&record_key).query_async(&mut raw).await.unwrap();
        assert_eq!(kept, value, "{key}: the value was changed");
    }

    // A key of another type altogether.
    let record_key = store.record_key("a-hash");
    redis::cmd("HSET").arg(&record_key).arg("field").arg("value").exec_async(&mut raw).await.unwrap();
    assert_storage(store.idempotency_begin(begin("a-hash")).await, "WRONGTYPE");
    assert_storage(store.idempotency_release("a-hash", "w1").await, "WRONGTYPE");
    let kind: String = redis::cmd("TYPE").arg(&record_key).query_async(&mut raw).await.unwrap();
    assert_eq!(kind, "hash");
}
