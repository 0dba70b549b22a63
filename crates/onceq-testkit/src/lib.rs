//! onceq-testkit: the conformance suite every onceq storage backend runs unchanged.
//!
//! # Layout
//!
//! - [`Backend`]: how the suite opens a fresh, empty store of the backend under test.
//! - [`conformance`]: one async function per behaviour and per invariant of docs/design.md, a file per
//!   area (enqueue, lease, settle, dead letters, queues, limits, long poll, ordering, groups,
//!   commits, schedules, invariants) beside the fixture they share.
//! - [`conformance_suite!`]: expands to one `#[tokio::test]` per conformance function; its list
//!   is also [`conformance::SUITE`], which `tests/conformance_complete.rs` checks against the
//!   functions the area files define.
//! - [`idempotency`]: the idempotency-store conformance suite and [`idempotency_suite!`] (checked
//!   the same way, against [`idempotency::SUITE`]).
//! - [`model`]: a simple in-memory reference model of the job lifecycle, for state-machine tests.
//! - [`proxy`]: a TCP proxy a test can cut, to take a service away from a client.
//!
//! The service fixtures, each behind a feature of the same name so that a crate compiles only
//! the clients of the services its tests use. Each reads its `ONCEQ_TEST_*_URL` (or uses the
//! local default that `scripts/test` starts), isolates every test, cleans up after it, and fails
//! the test with how to start or install the service when it is not there:
//!
//! - `postgres`: the test database and a schema per test.
//! - `redis`: the test Redis and a key prefix per test.
//! - `nats`: the test NATS server and a JetStream stream per test.
//! - `rabbitmq`: the test broker and a virtual host per test.
//! - `http`: a response read whole, the assertions on the API's response shapes, and test tokens.
//!
//! A backend crate runs the suite with, in `tests/conformance.rs`:
//!
//! ```ignore
//! onceq_testkit::conformance_suite!(my_backend::TestBackend);
//! ```

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::{Clock, Store};

pub mod conformance;
pub mod damage;
#[cfg(feature = "http")]
pub mod http;
pub mod idempotency;
pub mod inspect;
pub mod model;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod proxy;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;

/// A store opened for one test, with whatever must live as long as it (a temporary directory,
/// a schema to drop).
pub struct Opened<S> {
    /// The store under test.
    pub store: S,
    /// Kept alive for the store's lifetime; dropped after it.
    pub guard: Box<dyn Any + Send + Sync>,
}

/// A storage backend under test.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The store type.
    type Store: Store + 'static;

    /// Opens a fresh, empty store whose one clock is `clock`.
    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<Self::Store>;
}
