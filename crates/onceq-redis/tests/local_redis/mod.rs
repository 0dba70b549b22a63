//! The local test Redis: its URL, a fresh key prefix per test and the deletion of its keys, and
//! a failure that says how to start Redis when it is not there (tests never skip silently).

// Each test file uses part of this module; a panic is how a test reports a failure.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use onceq_core::{Clock, Error};
use onceq_redis::{RedisIdempotencyStore, RedisOptions};

/// The Redis the tests use: `ONCEQ_TEST_REDIS_URL`, or the local default.
pub fn url() -> String {
    std::env::var("ONCEQ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// Fails the test with what to do when the test Redis is not reachable.
pub fn redis_is_missing(error: impl std::fmt::Display) -> ! {
    panic!(
        "the onceq-redis tests need a Redis at {} (ONCEQ_TEST_REDIS_URL) and could not use it: {error}\n\
         Start one with:\n  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no \
         --dir /var/lib/redis --logfile /var/log/redis/ci.log\n\
         or install it first with:\n  apt-get update && apt-get install -y redis-server",
        url()
    )
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("onceq-test:{:016x}:", rand::random::<u64>())
}

/// A raw connection to the test Redis, for inspecting and arranging keys.
pub async fn raw() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url()).unwrap_or_else(|e| redis_is_missing(e));
    client.get_multiplexed_async_connection().await.unwrap_or_else(|e| redis_is_missing(e))
}

/// Every key under `prefix`, sorted.
pub async fn keys_under(prefix: &str) -> Vec<String> {
    let mut connection = raw().await;
    let mut keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut connection).await.unwrap();
    keys.sort();
    keys
}

/// Connects a store under `prefix`, failing the test with how to start Redis when it is down.
pub async fn connect(prefix: &str, clock: Option<Arc<dyn Clock>>) -> RedisIdempotencyStore {
    let options = RedisOptions { url: url(), key_prefix: prefix.to_string(), clock };
    match RedisIdempotencyStore::connect(options).await {
        Ok(store) => store,
        Err(error @ Error::Unavailable(_)) => redis_is_missing(error),
        Err(error) => panic!("connecting to the test Redis failed: {error}"),
    }
}

/// Deletes every key under its prefix when dropped.
pub struct PrefixGuard {
    pub prefix: String,
}

impl Drop for PrefixGuard {
    fn drop(&mut self) {
        // Drop cannot await: a short blocking connection does the cleanup.
        let deleted = redis::Client::open(url()).and_then(|client| client.get_connection()).and_then(|mut c| {
            let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query(&mut c)?;
            if !keys.is_empty() {
                redis::cmd("DEL").arg(keys).exec(&mut c)?;
            }
            Ok(())
        });
        if let Err(error) = deleted {
            eprintln!("could not delete the test keys under {:?}: {error}", self.prefix);
        }
    }
}
