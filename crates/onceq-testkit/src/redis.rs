//! The Redis fixture of every crate's tests (feature `redis`): the Redis to use, a key prefix per
//! test whose keys go when the test ends, and a failure that says how to start Redis when it is
//! not there (tests never skip silently).

/// The Redis the tests use unless `ONCEQ_TEST_REDIS_URL` names another.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// The test Redis: `ONCEQ_TEST_REDIS_URL`, or [`DEFAULT_URL`].
pub fn url() -> String {
    std::env::var("ONCEQ_TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// Fails the test with what to do when the test Redis is not reachable.
pub fn redis_is_missing(error: impl std::fmt::Display) -> ! {
    panic!(
        "these tests need a Redis at {} (set ONCEQ_TEST_REDIS_URL to use another) and could not use it: {error}\n\
         Run the tests with `scripts/test`, which starts the local one, or start it with:\n  \
         redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no \
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
    let listed: redis::RedisResult<Vec<String>> =
        redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut connection).await;
    let mut keys = listed.unwrap_or_else(|e| redis_is_missing(e));
    keys.sort();
    keys
}

/// Deletes every key under its prefix when dropped, also when the test fails.
pub struct PrefixGuard {
    /// The prefix whose keys go.
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
