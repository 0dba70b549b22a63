//! [`RedisIdempotencyStore`]: [`IdempotencyStore`] on Redis, standalone or Cluster.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use onceq_core::idempotency::{fingerprint_mismatch, not_held, validate_release};
use onceq_core::{Begin, BeginOutcome, Clock, Complete, Error, IdempotencyStore, Result, Timestamp};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;

use crate::error::{from_redis, unexpected_reply, CONNECTING};
use crate::eviction::{self, EvictionPolicyCheck};
use crate::record::{self, IN_PROGRESS_GRACE_MS};
use crate::scripts::Scripts;

/// The key prefix when none is chosen.
pub const DEFAULT_KEY_PREFIX: &str = "onceq:idempotency:";
/// Longest key prefix, in bytes.
pub const KEY_PREFIX_LEN_MAX: usize = 256;

/// Longest wait for a TCP connection (and its handshake) to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for one reply; a result of up to a mebibyte travels well within it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Reconnection attempts after the connection drops, before the pending requests fail
/// (a later request starts a new round).
const RECONNECT_RETRIES: usize = 3;
/// Longest pause between two reconnection attempts.
const RECONNECT_DELAY_MAX: Duration = Duration::from_secs(1);

/// How to reach Redis and lay the records out there.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[[user]:password@]host[:port][/db]`. TLS (`rediss://`) is not built in.
    pub url: String,
    /// Prepended to every Redis key the store writes, to keep its records apart from other data
    /// in the same Redis: 1 to [`KEY_PREFIX_LEN_MAX`] bytes, without `{` or `}` (the hash tag
    /// that follows it must be the idempotency key).
    pub key_prefix: String,
    /// The clock that judges claims and retentions, for tests. `None` in production: Redis's own
    /// clock (`TIME`) then judges, one clock for every process sharing the Redis (Invariant 7).
    pub clock: Option<Arc<dyn Clock>>,
}

impl RedisOptions {
    /// Options for the Redis at `url`, with [`DEFAULT_KEY_PREFIX`] and Redis's clock.
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions { url: url.into(), key_prefix: DEFAULT_KEY_PREFIX.to_string(), clock: None }
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact_password(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("clock", &self.clock)
            .finish()
    }
}

/// `url` without the credentials it may hold.
fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => format!("{}://***{}", &url[..scheme_end], &url[at..]),
        _ => url.to_string(),
    }
}

fn validate_key_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() || prefix.len() > KEY_PREFIX_LEN_MAX {
        return Err(Error::invalid(format!(
            "the Redis key prefix must be 1 to {KEY_PREFIX_LEN_MAX} bytes (got {})",
            prefix.len()
        )));
    }
    if prefix.contains(['{', '}']) {
        return Err(Error::invalid(format!(
            "the Redis key prefix {prefix:?} holds a brace; braces are kept for the hash tag of each idempotency key"
        )));
    }
    Ok(())
}

/// The idempotency store on Redis. See the crate docs for the layout and the guarantees.
///
/// Cheap to share: clone an `Arc` of it; every request multiplexes over one connection, which
/// is re-established automatically after it drops.
pub struct RedisIdempotencyStore {
    /// Multiplexed and self-reconnecting; cloned per request (a handle, not a connection).
    connection: ConnectionManager,
    scripts: Scripts,
    key_prefix: String,
    /// `Some` in tests only; see [`RedisOptions::clock`].
    clock: Option<Arc<dyn Clock>>,
    /// `host:port` of the Redis, for messages (never the URL, which may hold a password).
    address: String,
    /// What the connect-time check of `maxmemory-policy` found.
    eviction_policy: EvictionPolicyCheck,
}

impl fmt::Debug for RedisIdempotencyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisIdempotencyStore")
            .field("address", &self.address)
            .field("key_prefix", &self.key_prefix)
            .field("clock", &self.clock)
            .field("eviction_policy", &self.eviction_policy)
            .finish_non_exhaustive()
    }
}

/// One word of a script's reply.
type Word = Vec<u8>;

impl RedisIdempotencyStore {
    /// Connects to Redis, checks that it answers, and checks its `maxmemory-policy` (logging a
    /// warning when records may be evicted, or when the policy cannot be read).
    ///
    /// Errors: [`Error::InvalidRequest`] for a bad URL or key prefix, [`Error::Unavailable`]
    /// when Redis cannot be reached or refuses the credentials.
    pub async fn connect(options: RedisOptions) -> Result<Self> {
        validate_key_prefix(&options.key_prefix)?;
        let client = redis::Client::open(options.url.as_str()).map_err(|e| {
            Error::invalid(format!("the Redis URL {:?} is not valid: {e}", redact_password(&options.url)))
        })?;
        let address = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_DELAY_MAX);
        let mut connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| from_redis(&address, CONNECTING, e))?;
        let pong: Value =
            redis::cmd("PING").query_async(&mut connection).await.map_err(|e| from_redis(&address, "pinging", e))?;
        if !matches!(&pong, Value::SimpleString(s) if s == "PONG") {
            return Err(unexpected_reply(&address, "pinging", pong));
        }
        let eviction_policy = eviction::check(&mut connection).await;
        eviction::warn_if_risky(&address, &eviction_policy);
        tracing::debug!(
            redis = address.as_str(),
            key_prefix = options.key_prefix.as_str(),
            "idempotency store connected"
        );
        Ok(RedisIdempotencyStore {
            connection,
            scripts: Scripts::new(),
            key_prefix: options.key_prefix,
            clock: options.clock,
            address,
            eviction_policy,
        })
    }

    /// The Redis key that holds the record of idempotency key `key`: `<prefix>{<key>}`, hash
    /// tagged so it works on Redis Cluster.
    pub fn record_key(&self, key: &str) -> String {
        record::record_key(&self.key_prefix, key)
    }

    /// What the connect-time check of Redis's `maxmemory-policy` found.
    pub fn eviction_policy(&self) -> &EvictionPolicyCheck {
        &self.eviction_policy
    }

    /// The test clock's time, if one is set.
    fn now(&self) -> Option<Timestamp> {
        self.clock.as_ref().map(|clock| clock.now())
    }

    /// "now" as the scripts take it: the test clock's milliseconds, or empty for Redis's `TIME`.
    fn now_argument(now: Option<Timestamp>) -> String {
        now.map(|t| t.as_millis().to_string()).unwrap_or_default()
    }

    fn failure(&self, doing: &str) -> impl FnOnce(redis::RedisError) -> Error + '_ {
        let doing = doing.to_string();
        move |error| from_redis(&self.address, &doing, error)
    }

    fn corrupt(&self, key: &str) -> Error {
        Error::Storage(format!(
            "Redis at {} holds a value under {:?} that is not an onceq idempotency record; another program may be \
             writing under onceq's key prefix {:?}: give onceq a prefix of its own",
            self.address,
            self.record_key(key),
            self.key_prefix
        ))
    }

    /// The words of a script's reply (`{'acquired'}`, `{'in_progress', owner, until}`, ...).
    fn words(&self, doing: &str, reply: Value) -> Result<Vec<Word>> {
        let items = match reply {
            Value::Array(items) if !items.is_empty() => items,
            other => return Err(unexpected_reply(&self.address, doing, other)),
        };
        items
            .into_iter()
            .map(|item| match item {
                Value::BulkString(bytes) => Ok(bytes),
                Value::SimpleString(text) => Ok(text.into_bytes()),
                other => Err(unexpected_reply(&self.address, doing, other)),
            })
            .collect()
    }

    /// Reads a `{'ok'} | {'not_held'} | {'corrupt'}` reply.
    fn settled(&self, doing: &str, key: &str, owner: &str, reply: Value) -> Result<()> {
        let words = self.words(doing, reply)?;
        match words.iter().map(Vec::as_slice).collect::<Vec<_>>().as_slice() {
            [b"ok"] => Ok(()),
            [b"not_held"] => Err(not_held(key, owner)),
            [b"corrupt"] => Err(self.corrupt(key)),
            _ => Err(unexpected_reply(
                &self.address,
                doing,
                Value::Array(words.into_iter().map(Value::BulkString).collect()),
            )),
        }
    }
}

#[async_trait]
impl IdempotencyStore for RedisIdempotencyStore {
    /// The plain acquire path is one `SET NX PX`; when the key is taken, `lua/begin.lua`
    /// decides the rest atomically.
    async fn idempotency_begin(&self, begin: Begin) -> Result<BeginOutcome> {
        const DOING: &str = "beginning an idempotency key";
        begin.validate()?;
        let redis_key = self.record_key(&begin.key);
        let now = self.now();
        let mut connection = self.connection.clone();

        // Both are at most TTL_MS_MAX, so the sum cannot overflow.
        let key_ttl_ms = begin.ttl_ms + IN_PROGRESS_GRACE_MS;
        let value =
            record::in_progress(now.map(|t| t.plus_ms(begin.ttl_ms)), &begin.owner, begin.fingerprint.as_deref());
        let set: Value = redis::cmd("SET")
            .arg(&redis_key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(key_ttl_ms)
            .query_async(&mut connection)
            .await
            .map_err(self.failure(DOING))?;
        match set {
            Value::Okay => return Ok(BeginOutcome::Acquired),
            Value::Nil => {}
            other => return Err(unexpected_reply(&self.address, DOING, other)),
        }

        let reply: Value = self
            .scripts
            .begin
            .key(&redis_key)
            .arg(&begin.owner)
            .arg(begin.ttl_ms)
            .arg(begin.fingerprint.as_deref().unwrap_or_default())
            .arg(Self::now_argument(now))
            .invoke_async(&mut connection)
            .await
            .map_err(self.failure(DOING))?;
        let mut words = self.words(DOING, reply)?;
        let outcome = match words.as_slice() {
            [tag] if tag == b"acquired" => BeginOutcome::Acquired,
            [tag, owner, until] if tag == b"in_progress" => {
                let owner = String::from_utf8(owner.clone()).ok();
                let until = std::str::from_utf8(until).ok().and_then(|u| u.parse::<i64>().ok());
                match (owner, until) {
                    // A live claim ends after now; a reply saying otherwise is not to be trusted.
                    (Some(owner), Some(until)) if now.is_none_or(|now| until > now.as_millis()) => {
                        BeginOutcome::InProgress { owner, until: Timestamp::from_millis(until) }
                    }
                    _ => return Err(unexpected_reply(&self.address, DOING, words)),
                }
            }
            // Moved out, not copied: a result may be a mebibyte.
            [tag, _] if tag == b"completed" => BeginOutcome::Completed { result: words.swap_remove(1) },
            [tag] if tag == b"fingerprint_mismatch" => return Err(fingerprint_mismatch(&begin.key)),
            [tag] if tag == b"corrupt" => return Err(self.corrupt(&begin.key)),
            _ => return Err(unexpected_reply(&self.address, DOING, words)),
        };
        Ok(outcome)
    }

    async fn idempotency_complete(&self, complete: Complete) -> Result<()> {
        const DOING: &str = "completing an idempotency key";
        complete.validate()?;
        let reply: Value = self
            .scripts
            .complete
            .key(self.record_key(&complete.key))
            .arg(&complete.owner)
            .arg(complete.retention_ms)
            .arg(complete.result.as_slice())
            .arg(Self::now_argument(self.now()))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(self.failure(DOING))?;
        self.settled(DOING, &complete.key, &complete.owner, reply)
    }

    async fn idempotency_release(&self, key: &str, owner: &str) -> Result<()> {
        const DOING: &str = "releasing an idempotency key";
        validate_release(key, owner)?;
        let reply: Value = self
            .scripts
            .release
            .key(self.record_key(key))
            .arg(owner)
            .arg(Self::now_argument(self.now()))
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(self.failure(DOING))?;
        self.settled(DOING, key, owner, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_prefix_is_bounded_and_brace_free() {
        assert_eq!(validate_key_prefix("onceq:idempotency:"), Ok(()));
        for bad in ["", "a{b", "a}b", &"p".repeat(KEY_PREFIX_LEN_MAX + 1)] {
            assert!(matches!(validate_key_prefix(bad), Err(Error::InvalidRequest(_))), "{bad:?}");
        }
        assert_eq!(validate_key_prefix(&"p".repeat(KEY_PREFIX_LEN_MAX)), Ok(()));
    }

    #[test]
    fn passwords_stay_out_of_debug_output() {
        assert_eq!(redact_password("redis://user:s3cret@cache:6379/0"), "redis://***@cache:6379/0");
        assert_eq!(redact_password("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        let shown = format!("{:?}", RedisOptions::new("redis://:s3cret@cache:6379"));
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
