//! The Redis store's tests on top of the testkit's Redis fixture (the test Redis, a key prefix per
//! test whose keys go when it ends, a failure that says how to start Redis): connecting a store.

// Each test file uses part of this module; a panic is how a test reports a failure.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use onceq_core::{Clock, Error};
use onceq_redis::{RedisIdempotencyStore, RedisOptions};

#[allow(unused_imports)] // each test binary uses its own subset
pub use onceq_testkit::redis::{keys_under, raw, redis_is_missing, unique_prefix, url, PrefixGuard};

/// Connects a store under `prefix`, failing the test with how to start Redis when it is down.
pub async fn connect(prefix: &str, clock: Option<Arc<dyn Clock>>) -> RedisIdempotencyStore {
    let options = RedisOptions { url: url(), key_prefix: prefix.to_string(), clock };
    match RedisIdempotencyStore::connect(options).await {
        Ok(store) => store,
        Err(error @ Error::Unavailable(_)) => redis_is_missing(error),
        Err(error) => panic!("connecting to the test Redis failed: {error}"),
    }
}
