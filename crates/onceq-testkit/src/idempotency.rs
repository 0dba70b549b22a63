//! The idempotency-store conformance suite: one function per rule of
//! `onceq_core::idempotency`'s semantics, run unchanged by every idempotency store (embedded,
//! PostgreSQL, Redis, and the HTTP client) through [`idempotency_suite!`](crate::idempotency_suite).
//! Results are JSON text, which every store (the HTTP API included) carries byte for byte.

// These functions are tests: a panic is how they report a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::idempotency::{FINGERPRINT_LEN_MAX, KEY_LEN_MAX, RESULT_BYTES_MAX, RETENTION_MS_MAX, TTL_MS_MAX};
use onceq_core::{Begin, BeginOutcome, Clock, Complete, Error, IdempotencyStore, ManualClock, Timestamp};

use crate::Opened;

/// An idempotency store under test.
#[async_trait]
pub trait IdempotencyBackend: Send + Sync + 'static {
    /// The store type.
    type Store: IdempotencyStore + 'static;

    /// Opens a fresh, empty store whose one clock is `clock`.
    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<Self::Store>;
}

struct Fixture<S> {
    store: Arc<S>,
    clock: Arc<ManualClock>,
    _guard: Box<dyn std::any::Any + Send + Sync>,
}

async fn open<B: IdempotencyBackend>(backend: &B) -> Fixture<B::Store> {
    let clock = ManualClock::at_default_start();
    let opened = backend.open(clock.clone()).await;
    Fixture { store: Arc::new(opened.store), clock, _guard: opened.guard }
}

fn begin(key: &str, owner: &str, ttl_ms: u64) -> Begin {
    Begin { key: key.into(), owner: owner.into(), ttl_ms, fingerprint: None }
}

fn complete(key: &str, owner: &str, result: &[u8], retention_ms: u64) -> Complete {
    Complete { key: key.into(), owner: owner.into(), result: result.to_vec(), retention_ms }
}

impl<S: IdempotencyStore> Fixture<S> {
    async fn begin(&self, b: Begin) -> Result<BeginOutcome, Error> {
        self.store.idempotency_begin(b).await
    }

    fn at(&self, plus_ms: u64) -> Timestamp {
        self.clock.now().plus_ms(plus_ms)
    }
}

fn is_conflict<T: std::fmt::Debug>(result: Result<T, Error>) {
    assert!(matches!(result, Err(Error::Conflict(_))), "expected a conflict, got {result:?}");
}

/// A key nobody holds is acquired.
pub async fn begin_acquires_a_new_key<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    assert_eq!(f.begin(begin("k", "w1", 1000)).await, Ok(BeginOutcome::Acquired));
}

/// A key held by another owner is reported in progress, with its holder and expiry.
pub async fn begin_reports_in_progress_to_another_owner<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    let until = f.at(1000);
    f.begin(begin("k", "w1", 1000)).await.unwrap();
    assert_eq!(f.begin(begin("k", "w2", 5000)).await, Ok(BeginOutcome::InProgress { owner: "w1".into(), until }));
}

/// The holder beginning again keeps the key and moves its expiry.
pub async fn begin_by_the_holder_reacquires_and_moves_the_expiry<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    f.begin(begin("k", "w1", 1000)).await.unwrap();
    f.clock.advance(500);
    assert_eq!(f.begin(begin("k", "w1", 1000)).await, Ok(BeginOutcome::Acquired));
    let until = f.at(1000);
    assert_eq!(f.begin(begin("k", "w2", 1000)).await, Ok(BeginOutcome::InProgress { owner: "w1".into(), until }));
}

/// After complete, every begin gets the recorded result, byte for byte, whoever asks.
pub async fn complete_then_begin_returns_the_result<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    f.begin(begin("k", "w1", 1000)).await.unwrap();
    let result = br#"{"charged": 4200}"#;
    f.store.idempotency_complete(complete("k", "w1", result, 60_000)).await.unwrap();
    for owner in ["w1", "w2"] {
        assert_eq!(f.begin(begin("k", owner, 1000)).await, Ok(BeginOutcome::Completed { result: result.to_vec() }));
    }
}

/// Complete and release by someone who does not hold the key conflict and change nothing.
pub async fn complete_and_release_are_owner_checked<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    is_conflict(f.store.idempotency_complete(complete("k", "w1", br#""x""#, 1000)).await);
    is_conflict(f.store.idempotency_release("k", "w1").await);
    let until = f.at(1000);
    f.begin(begin("k", "w1", 1000)).await.unwrap();
    is_conflict(f.store.idempotency_complete(complete("k", "w2", br#""x""#, 1000)).await);
    is_conflict(f.store.idempotency_release("k", "w2").await);
    assert_eq!(f.begin(begin("k", "w3", 1000)).await, Ok(BeginOutcome::InProgress { owner: "w1".into(), until }));
    f.store.idempotency_complete(complete("k", "w1", br#""done""#, 1000)).await.unwrap();
    // A completed key can be neither completed again nor released.
    is_conflict(f.store.idempotency_complete(complete("k", "w1", br#""again""#, 1000)).await);
    is_conflict(f.store.idempotency_release("k", "w1").await);
    assert_eq!(f.begin(begin("k", "w3", 1000)).await, Ok(BeginOutcome::Completed { result: br#""done""#.to_vec() }));
}

/// A released key is acquired by the next begin.
pub async fn release_frees_the_key<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    f.begin(begin("k", "w1", 1000)).await.unwrap();
    f.store.idempotency_release("k", "w1").await.unwrap();
    assert_eq!(f.begin(begin("k", "w2", 1000)).await, Ok(BeginOutcome::Acquired));
}

/// A claim whose holder vanished expires after its ttl: then another owner acquires, and the old
/// holder can no longer complete.
pub async fn an_in_progress_claim_expires_after_its_ttl<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    f.begin(begin("k", "w1", 1000)).await.unwrap();
    f.clock.advance(999);
    let until = f.at(1);
    assert_eq!(f.begin(begin("k", "w2", 1000)).await, Ok(BeginOutcome::InProgress { owner: "w1".into(), until }));
    f.clock.advance(1);
    assert_eq!(f.begin(begin("k", "w2", 1000)).await, Ok(BeginOutcome::Acquired));
    is_conflict(f.store.idempotency_complete(complete("k", "w1", br#""late""#, 1000)).await);
    f.store.idempotency_complete(complete("k", "w2", br#""w2""#, 1000)).await.unwrap();
    assert_eq!(f.begin(begin("k", "w1", 1000)).await, Ok(BeginOutcome::Completed { result: br#""w2""#.to_vec() }));
}

/// A holder whose claim expired but was not taken over may still complete it.
pub async fn an_expired_claim_nobody_took_can_still_be_completed<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    f.begin(begin("k", "w1", 1000)).await.unwrap();
    f.clock.advance(5000);
    f.store.idempotency_complete(complete("k", "w1", br#""slow but done""#, 1000)).await.unwrap();
    assert_eq!(
        f.begin(begin("k", "w2", 1000)).await,
        Ok(BeginOutcome::Completed { result: br#""slow but done""#.to_vec() })
    );
}

/// A completed record is kept for its retention, then the key is free again.
pub async fn a_completed_record_expires_after_its_retention<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    f.begin(begin("k", "w1", 1000)).await.unwrap();
    f.store.idempotency_complete(complete("k", "w1", br#""r""#, 10_000)).await.unwrap();
    f.clock.advance(9_999);
    assert_eq!(f.begin(begin("k", "w2", 1000)).await, Ok(BeginOutcome::Completed { result: br#""r""#.to_vec() }));
    f.clock.advance(1);
    assert_eq!(f.begin(begin("k", "w2", 1000)).await, Ok(BeginOutcome::Acquired));
}

/// A key reused with another fingerprint conflicts, in progress or completed; the same or an
/// absent fingerprint does not.
pub async fn a_different_fingerprint_conflicts<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    let with = |owner: &str, fingerprint: Option<&str>| Begin {
        fingerprint: fingerprint.map(str::to_owned),
        ..begin("k", owner, 1000)
    };
    assert_eq!(f.begin(with("w1", Some("POST /pay 42"))).await, Ok(BeginOutcome::Acquired));
    is_conflict(f.begin(with("w2", Some("POST /pay 43"))).await);
    is_conflict(f.begin(with("w1", Some("POST /pay 43"))).await);
    let until = f.at(1000);
    assert_eq!(
        f.begin(with("w2", Some("POST /pay 42"))).await,
        Ok(BeginOutcome::InProgress { owner: "w1".into(), until })
    );
    assert_eq!(f.begin(with("w2", None)).await, Ok(BeginOutcome::InProgress { owner: "w1".into(), until }));
    f.store.idempotency_complete(complete("k", "w1", br#""paid""#, 1000)).await.unwrap();
    is_conflict(f.begin(with("w2", Some("POST /pay 43"))).await);
    assert_eq!(
        f.begin(with("w2", Some("POST /pay 42"))).await,
        Ok(BeginOutcome::Completed { result: br#""paid""#.to_vec() })
    );
}

/// A claim taken over after its expiry starts fresh: it keeps nothing of the dead claim, not
/// even its fingerprint.
pub async fn a_taken_over_claim_starts_fresh<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    let with = |owner: &str, fingerprint: Option<&str>| Begin {
        fingerprint: fingerprint.map(str::to_owned),
        ..begin("k", owner, 1000)
    };
    f.begin(with("w1", Some("first request"))).await.unwrap();
    f.clock.advance(1000);
    assert_eq!(f.begin(with("w2", None)).await, Ok(BeginOutcome::Acquired));
    let until = f.at(1000);
    assert_eq!(
        f.begin(with("w3", Some("another request"))).await,
        Ok(BeginOutcome::InProgress { owner: "w2".into(), until })
    );
}

/// Many owners beginning one key at once: exactly one acquires, every other sees it in progress.
pub async fn concurrent_begins_acquire_once<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = f.store.clone();
        tasks.spawn(async move { store.idempotency_begin(begin("k", &format!("w{i}"), 60_000)).await.unwrap() });
    }
    let mut acquired = 0;
    while let Some(outcome) = tasks.join_next().await {
        match outcome.unwrap() {
            BeginOutcome::Acquired => acquired += 1,
            BeginOutcome::InProgress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acquired, 1);
}

/// Every size and duration is bounded; a request past a bound is refused and changes nothing.
pub async fn limits_are_enforced<B: IdempotencyBackend>(backend: &B) {
    let f = open(backend).await;
    let invalid = |r: Result<BeginOutcome, Error>| assert!(matches!(r, Err(Error::InvalidRequest(_))), "{r:?}");
    invalid(f.begin(begin("", "w", 1000)).await);
    invalid(f.begin(begin(&"k".repeat(KEY_LEN_MAX + 1), "w", 1000)).await);
    invalid(f.begin(begin("k", "", 1000)).await);
    invalid(f.begin(begin("k", "w", 0)).await);
    invalid(f.begin(begin("k", "w", TTL_MS_MAX + 1)).await);
    invalid(f.begin(Begin { fingerprint: Some("f".repeat(FINGERPRINT_LEN_MAX + 1)), ..begin("k", "w", 1000) }).await);
    assert_eq!(f.begin(begin(&"k".repeat(KEY_LEN_MAX), "w", TTL_MS_MAX)).await, Ok(BeginOutcome::Acquired));
    f.begin(begin("k", "w", 1000)).await.unwrap();
    let too_big = f.store.idempotency_complete(complete("k", "w", &vec![0; RESULT_BYTES_MAX + 1], 1000)).await;
    assert!(matches!(too_big, Err(Error::PayloadTooLarge(_))), "{too_big:?}");
    let too_long = f.store.idempotency_complete(complete("k", "w", br#""r""#, RETENTION_MS_MAX + 1)).await;
    assert!(matches!(too_long, Err(Error::InvalidRequest(_))), "{too_long:?}");
    // Nothing changed: the key is still in progress under w.
    let until = f.at(1000);
    assert_eq!(f.begin(begin("k", "x", 1000)).await, Ok(BeginOutcome::InProgress { owner: "w".into(), until }));
}

/// The idempotency conformance functions every idempotency store runs: what
/// [`idempotency_suite!`](crate::idempotency_suite) expands to, as data, so that a test can check
/// that none is left out.
pub const SUITE: &[&str] = crate::idempotency_suite!(@list @names;);

/// Expands to one `#[tokio::test]` per idempotency conformance function. The list is written once,
/// in the `@list` arm; the testkit's `conformance_complete` test fails when a function is missing.
#[macro_export]
macro_rules! idempotency_suite {
    (@tests $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::idempotency::$name(&$backend).await;
            }
        )*
    };
    (@names; $($name:ident),* $(,)?) => {
        &[$(stringify!($name)),*]
    };
    // Hands the list to the arm named by the caller (`@tests $backend;` or `@names;`).
    (@list $($arm:tt)*) => {
        $crate::idempotency_suite! { $($arm)*
            begin_acquires_a_new_key,
            begin_reports_in_progress_to_another_owner,
            begin_by_the_holder_reacquires_and_moves_the_expiry,
            complete_then_begin_returns_the_result,
            complete_and_release_are_owner_checked,
            release_frees_the_key,
            an_in_progress_claim_expires_after_its_ttl,
            an_expired_claim_nobody_took_can_still_be_completed,
            a_completed_record_expires_after_its_retention,
            a_different_fingerprint_conflicts,
            a_taken_over_claim_starts_fresh,
            concurrent_begins_acquire_once,
            limits_are_enforced,
        }
    };
    ($backend:expr) => {
        $crate::idempotency_suite! { @list @tests $backend; }
    };
}
