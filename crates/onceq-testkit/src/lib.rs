//! onceq-testkit: the conformance suite every onceq storage backend runs unchanged.
//!
//! # Layout
//!
//! - [`Backend`]: how the suite opens a fresh, empty store of the backend under test.
//! - [`conformance`]: one async function per behaviour and per invariant of DESIGN.md.
//! - [`conformance_suite!`]: expands to one `#[tokio::test]` per conformance function.
//! - [`idempotency`]: the idempotency-store conformance suite and [`idempotency_suite!`].
//! - [`model`]: a simple in-memory reference model of the job lifecycle, for state-machine tests.
//! - [`proxy`]: a TCP proxy a test can cut, to take a service away from a client.
//! - `postgres` (feature `postgres`): the test database, and dropping a test's schemas.
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
pub mod idempotency;
pub mod model;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod proxy;

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
