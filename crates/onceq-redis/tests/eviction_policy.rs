//! At connect the store reads Redis's `maxmemory-policy` and warns when it may evict records
//! (every policy but `noeviction`: `allkeys-*` evict any key, `volatile-*` any key with a TTL,
//! which every record has), and warns that it could not check when `CONFIG` is refused, as
//! managed Redis services do. The policy of the local test Redis is changed with `CONFIG SET`
//! and restored afterwards, even if the test fails; one test does it all, so no other test in
//! this file sees a changed policy.

// A panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod local_redis;

use std::io::Write;
use std::sync::{Arc, Mutex};

use onceq_redis::{classify_eviction_policy, EvictionPolicyCheck, EvictionRisk, RedisIdempotencyStore, RedisOptions};

/// Log lines written while it is the thread's default subscriber.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Connects with `options` and returns the store with the warnings logged meanwhile. The test
/// runtime is single-threaded, so the connect future logs on this thread.
async fn connect_capturing_warnings(options: RedisOptions) -> (RedisIdempotencyStore, String) {
    let logs = CapturedLogs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let store = {
        let _default = tracing::subscriber::set_default(subscriber);
        RedisIdempotencyStore::connect(options).await
    };
    let store = store.unwrap_or_else(|e| local_redis::redis_is_missing(e));
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    (store, text)
}

/// Sets the test Redis's policy, and puts the original back when dropped.
struct PolicyGuard {
    original: String,
}

impl PolicyGuard {
    async fn set(policy: &str) -> PolicyGuard {
        let mut connection = local_redis::raw().await;
        let (_, original): (String, String) =
            redis::cmd("CONFIG").arg("GET").arg("maxmemory-policy").query_async(&mut connection).await.unwrap();
        let guard = PolicyGuard { original };
        guard.change(policy).await;
        guard
    }

    async fn change(&self, policy: &str) {
        let mut connection = local_redis::raw().await;
        redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg(policy).exec_async(&mut connection).await.unwrap();
    }
}

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        let restored = redis::Client::open(local_redis::url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("CONFIG").arg("SET").arg("maxmemory-policy").arg(&self.original).exec(&mut c));
        if let Err(error) = restored {
            eprintln!("could not restore maxmemory-policy {:?} on the test Redis: {error}", self.original);
        }
    }
}

/// An ACL user that may do everything but `CONFIG`, deleted when dropped.
struct UserWithoutConfig {
    name: String,
}

impl Drop for UserWithoutConfig {
    fn drop(&mut self) {
        let deleted = redis::Client::open(local_redis::url())
            .and_then(|c| c.get_connection())
            .and_then(|mut c| redis::cmd("ACL").arg("DELUSER").arg(&self.name).exec(&mut c));
        if let Err(error) = deleted {
            eprintln!("could not delete the test ACL user {:?}: {error}", self.name);
        }
    }
}

fn options() -> RedisOptions {
    RedisOptions { url: local_redis::url(), key_prefix: local_redis::unique_prefix(), clock: None }
}

#[tokio::test]
async fn a_policy_that_may_evict_records_is_warned_about() {
    let policies = PolicyGuard::set("allkeys-lru").await;
    let (store, warnings) = connect_capturing_warnings(options()).await;
    assert_eq!(
        store.eviction_policy(),
        &EvictionPolicyCheck::Checked { policy: "allkeys-lru".into(), risk: EvictionRisk::AnyKey }
    );
    assert!(warnings.contains("WARN"), "{warnings}");
    assert!(warnings.contains("maxmemory-policy allkeys-lru may evict onceq idempotency records"), "{warnings}");
    assert!(warnings.contains("duplicates become possible"), "{warnings}");
    assert!(warnings.contains("Set maxmemory-policy noeviction"), "{warnings}");

    policies.change("volatile-ttl").await;
    let (store, warnings) = connect_capturing_warnings(options()).await;
    assert_eq!(
        store.eviction_policy(),
        &EvictionPolicyCheck::Checked { policy: "volatile-ttl".into(), risk: EvictionRisk::KeysWithTtl }
    );
    assert!(warnings.contains("maxmemory-policy volatile-ttl may evict"), "{warnings}");

    policies.change("noeviction").await;
    let (store, warnings) = connect_capturing_warnings(options()).await;
    assert_eq!(
        store.eviction_policy(),
        &EvictionPolicyCheck::Checked { policy: "noeviction".into(), risk: EvictionRisk::None }
    );
    assert_eq!(warnings, "");

    // Every policy this Redis accepts is classified, and only noeviction is safe.
    for policy in [
        "noeviction",
        "allkeys-lru",
        "allkeys-lfu",
        "allkeys-random",
        "volatile-lru",
        "volatile-lfu",
        "volatile-random",
        "volatile-ttl",
    ] {
        policies.change(policy).await;
        let (store, warnings) = connect_capturing_warnings(options()).await;
        let EvictionPolicyCheck::Checked { policy: reported, risk } = store.eviction_policy().clone() else {
            panic!("{policy}: the policy was not checked");
        };
        assert_eq!(reported, policy);
        assert_eq!(risk, classify_eviction_policy(policy));
        assert_ne!(risk, EvictionRisk::Unknown, "{policy}");
        assert_eq!(risk.may_evict_records(), policy != "noeviction", "{policy}");
        assert_eq!(warnings.is_empty(), policy == "noeviction", "{policy}: {warnings}");
    }
}

#[tokio::test]
async fn a_redis_that_refuses_config_is_warned_about() {
    let user = UserWithoutConfig { name: format!("onceq-test-{:016x}", rand::random::<u64>()) };
    let mut connection = local_redis::raw().await;
    redis::cmd("ACL")
        .arg("SETUSER")
        .arg(&user.name)
        .arg("on")
        .arg(">s3cret")
        .arg("~*")
        .arg("+@all")
        .arg("-config")
        .exec_async(&mut connection)
        .await
        .unwrap();
    let url = local_redis::url();
    let address = url.trim_start_matches("redis://").rsplit('@').next().unwrap().to_string();
    let options = RedisOptions { url: format!("redis://{}:s3cret@{address}", user.name), ..options() };

    let (store, warnings) = connect_capturing_warnings(options).await;
    let EvictionPolicyCheck::Unchecked { reason } = store.eviction_policy() else {
        panic!("expected an unchecked policy, got {:?}", store.eviction_policy());
    };
    assert!(reason.contains("no permissions to run the 'config|get' command"), "{reason}");
    assert!(warnings.contains("could not check Redis maxmemory-policy"), "{warnings}");
    assert!(warnings.contains("duplicates become possible"), "{warnings}");
    assert!(!warnings.contains("s3cret"), "{warnings}");
}
