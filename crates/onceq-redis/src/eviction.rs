//! Whether Redis may evict idempotency records: its `maxmemory-policy`.
//!
//! An evicted completed record is a forgotten effect: the next `begin` acquires the key and the
//! effect runs again. Only `noeviction` rules that out (a full Redis then refuses writes, which
//! the store reports as unavailable). Every record has a TTL, so the `volatile-*` policies,
//! which evict keys with a TTL, threaten them as much as the `allkeys-*` ones. With `maxmemory`
//! 0 (no limit) nothing is evicted yet, but a limit can be set at run time, so the policy alone
//! decides the warning.

use redis::aio::ConnectionManager;
use redis::Value;

/// What a `maxmemory-policy` may do to the store's records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvictionRisk {
    /// `noeviction`: nothing is evicted; writes fail when memory is full.
    None,
    /// `allkeys-lru`, `allkeys-lfu`, `allkeys-random`: any key may be evicted.
    AnyKey,
    /// `volatile-lru`, `volatile-lfu`, `volatile-random`, `volatile-ttl`: keys with a TTL may be
    /// evicted, and every record has one.
    KeysWithTtl,
    /// A policy this version does not know: assume it may evict.
    Unknown,
}

impl EvictionRisk {
    /// Whether records may be evicted under this risk.
    pub fn may_evict_records(self) -> bool {
        self != EvictionRisk::None
    }
}

/// Classifies a `maxmemory-policy` value (case-insensitive, as Redis accepts it).
pub fn classify_eviction_policy(policy: &str) -> EvictionRisk {
    match policy.trim().to_ascii_lowercase().as_str() {
        "noeviction" => EvictionRisk::None,
        "allkeys-lru" | "allkeys-lfu" | "allkeys-random" => EvictionRisk::AnyKey,
        "volatile-lru" | "volatile-lfu" | "volatile-random" | "volatile-ttl" => EvictionRisk::KeysWithTtl,
        _ => EvictionRisk::Unknown,
    }
}

/// The outcome of checking a Redis's eviction policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvictionPolicyCheck {
    /// `CONFIG GET maxmemory-policy` answered.
    Checked {
        /// The policy Redis reported.
        policy: String,
        /// What it may do to records.
        risk: EvictionRisk,
    },
    /// The policy could not be read (managed Redis services often refuse `CONFIG`).
    Unchecked {
        /// Why, as Redis or the client said it.
        reason: String,
    },
}

/// Reads the policy of the Redis behind `connection`.
pub(crate) async fn check(connection: &mut ConnectionManager) -> EvictionPolicyCheck {
    let reply: Result<Value, _> = redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(connection).await;
    match reply {
        Ok(value) => match policy_of(value) {
            Some(policy) => EvictionPolicyCheck::Checked { risk: classify_eviction_policy(&policy), policy },
            None => EvictionPolicyCheck::Unchecked { reason: "CONFIG GET maxmemory-policy gave no value".into() },
        },
        Err(error) => EvictionPolicyCheck::Unchecked { reason: error.to_string() },
    }
}

/// The policy in a `CONFIG GET` reply: `[name, value]` over RESP2, `{name: value}` over RESP3.
fn policy_of(reply: Value) -> Option<String> {
    let value = match reply {
        Value::Array(items) => items.into_iter().nth(1)?,
        Value::Map(pairs) => pairs.into_iter().next()?.1,
        _ => return None,
    };
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

/// Logs what `check` found, once, at connect.
pub(crate) fn warn_if_risky(address: &str, check: &EvictionPolicyCheck) {
    match check {
        EvictionPolicyCheck::Checked { policy, risk } if risk.may_evict_records() => tracing::warn!(
            redis = address,
            maxmemory_policy = policy.as_str(),
            "Redis maxmemory-policy {policy} may evict onceq idempotency records: a completed record evicted \
             before its retention is forgotten, and its effect can run again (duplicates become possible). \
             Set maxmemory-policy noeviction on this Redis, or give onceq a Redis of its own"
        ),
        EvictionPolicyCheck::Checked { .. } => {}
        EvictionPolicyCheck::Unchecked { reason } => tracing::warn!(
            redis = address,
            reason = reason.as_str(),
            "could not check Redis maxmemory-policy ({reason}); unless it is noeviction, completed idempotency \
             records may be evicted early and duplicates become possible"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_noeviction_keeps_every_record() {
        assert_eq!(classify_eviction_policy("noeviction"), EvictionRisk::None);
        assert_eq!(classify_eviction_policy("NoEviction"), EvictionRisk::None);
        for policy in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert_eq!(classify_eviction_policy(policy), EvictionRisk::AnyKey, "{policy}");
        }
        for policy in ["volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"] {
            assert_eq!(classify_eviction_policy(policy), EvictionRisk::KeysWithTtl, "{policy}");
        }
        assert_eq!(classify_eviction_policy("some-future-policy"), EvictionRisk::Unknown);
        let risky: Vec<bool> =
            [EvictionRisk::None, EvictionRisk::AnyKey, EvictionRisk::KeysWithTtl, EvictionRisk::Unknown]
                .into_iter()
                .map(EvictionRisk::may_evict_records)
                .collect();
        assert_eq!(risky, [false, true, true, true]);
    }

    #[test]
    fn the_policy_is_read_from_either_protocol() {
        let name = || Value::BulkString(b"maxmemory-policy".to_vec());
        let resp2 = Value::Array(vec![name(), Value::BulkString(b"allkeys-lru".to_vec())]);
        assert_eq!(policy_of(resp2), Some("allkeys-lru".to_string()));
        let resp3 = Value::Map(vec![(name(), Value::BulkString(b"noeviction".to_vec()))]);
        assert_eq!(policy_of(resp3), Some("noeviction".to_string()));
        assert_eq!(policy_of(Value::Array(vec![])), None);
        assert_eq!(policy_of(Value::Nil), None);
    }
}
