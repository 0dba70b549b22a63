//! The Redis idempotency store passes the idempotency conformance suite, unchanged, against the
//! real Redis of this machine; each test works under a key prefix of its own, deleted after it.

mod local_redis;

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::Clock;
use onceq_redis::RedisIdempotencyStore;
use onceq_testkit::idempotency::IdempotencyBackend;
use onceq_testkit::Opened;

struct RedisBackend;

#[async_trait]
impl IdempotencyBackend for RedisBackend {
    type Store = RedisIdempotencyStore;

    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<RedisIdempotencyStore> {
        let prefix = local_redis::unique_prefix();
        let store = local_redis::connect(&prefix, Some(clock)).await;
        Opened { store, guard: Box::new(local_redis::PrefixGuard { prefix }) }
    }
}

onceq_testkit::idempotency_suite!(RedisBackend);
