//! The conformance suite of [`Inspect`], the operator's bounded reads: run unchanged by every
//! store that has it (embedded, PostgreSQL) through [`inspect_suite!`](crate::inspect_suite).

// These functions are tests: a panic is how they report a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::limits::JOB_PAGE_MAX;
use onceq_core::{
    Clock, Error, Inspect, JobId, JobList, JobPage, JobState, LeaseOptions, ManualClock, NewJob, QueueName, Store,
    StoreExt,
};

use crate::Opened;

/// A store with [`Inspect`] under test.
#[async_trait]
pub trait InspectBackend: Send + Sync + 'static {
    /// The store type.
    type Store: Store + Inspect + onceq_core::IdempotencyStore + 'static;

    /// Opens a fresh, empty store whose one clock is `clock`.
    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<Self::Store>;
}

fn queue(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

/// `job_page` lists a queue's jobs in one state, by id, a page at a time (`next` is the last id
/// of a page that has more after it); jobs of other states and other queues are not listed; a
/// limit outside 1..=JOB_PAGE_MAX and an unknown queue are refused.
pub async fn job_page_lists_one_state_by_id<B: InspectBackend>(backend: &B) {
    let clock = ManualClock::at_default_start();
    let opened = backend.open(clock.clone()).await;
    let store = opened.store;
    let q = queue("browse");
    let mut ready = Vec::new();
    for i in 0..5 {
        ready.push(store.enqueue(&q, NewJob::new(format!("ready {i}"))).await.unwrap().id);
    }
    let scheduled = store.enqueue(&q, NewJob::new("later").delay_ms(60_000)).await.unwrap().id;
    store.enqueue(&queue("elsewhere"), NewJob::new("other queue")).await.unwrap();
    let leased = store.job_lease(&q, LeaseOptions::default()).await.unwrap();
    assert_eq!(leased.iter().map(|j| j.id).collect::<Vec<_>>(), vec![ready[0]]);
    let ready = &ready[1..];
    let page = |state, after: Option<JobId>, limit| JobPage { state, after, limit };
    let ids = |list: &JobList| list.jobs.iter().map(|j| j.id).collect::<Vec<_>>();

    let first = store.job_page(&q, page(JobState::Ready, None, 2)).await.unwrap();
    assert_eq!((ids(&first), first.next), (ready[..2].to_vec(), Some(ready[1])));
    assert!(first.jobs.iter().all(|j| j.state == JobState::Ready && j.queue == q));
    assert_eq!(first.jobs[0], store.job_get(ready[0]).await.unwrap(), "a listed job reads as job_get reads it");
    let second = store.job_page(&q, page(JobState::Ready, first.next, 2)).await.unwrap();
    assert_eq!((ids(&second), second.next), (ready[2..].to_vec(), None));
    let whole = store.job_page(&q, page(JobState::Ready, None, JOB_PAGE_MAX)).await.unwrap();
    assert_eq!((ids(&whole), whole.next), (ready.to_vec(), None));

    let list = store.job_page(&q, page(JobState::Leased, None, 10)).await.unwrap();
    assert_eq!((ids(&list), list.next), (vec![leased[0].id], None));
    assert_eq!(list.jobs[0].lease_expires_at, Some(leased[0].lease_expires_at));
    let list = store.job_page(&q, page(JobState::Scheduled, None, 10)).await.unwrap();
    assert_eq!((ids(&list), list.next), (vec![scheduled], None));
    let list = store.job_page(&q, page(JobState::Dead, None, 10)).await.unwrap();
    assert_eq!((ids(&list), list.next), (vec![], None));

    store.fail(leased[0].lease(), "broken").await.unwrap();
    let list = store.job_page(&q, page(JobState::Dead, None, 10)).await.unwrap();
    assert_eq!(ids(&list), vec![leased[0].id]);
    assert_eq!(list.jobs[0].errors.iter().map(|e| e.error.as_str()).collect::<Vec<_>>(), vec!["broken"]);

    for limit in [0, JOB_PAGE_MAX + 1] {
        assert_eq!(
            store.job_page(&q, page(JobState::Ready, None, limit)).await,
            Err(Error::InvalidRequest(format!("limit is {limit}; it must be between 1 and {JOB_PAGE_MAX}")))
        );
    }
    let unknown = queue("never-made");
    assert_eq!(
        store.job_page(&unknown, page(JobState::Ready, None, 1)).await,
        Err(Error::QueueNotFound(unknown.clone()))
    );
}

/// `job_by_dedup` names the job a dedup id enqueued while its entry lasts (the queue's dedup
/// window), and nothing after; an unknown queue is refused.
pub async fn job_by_dedup_names_the_job_while_the_entry_lasts<B: InspectBackend>(backend: &B) {
    let clock = ManualClock::at_default_start();
    let opened = backend.open(clock.clone()).await;
    let store = opened.store;
    let q = queue("dedup-browse");
    let id = store.enqueue(&q, NewJob::new("once").dedup_id("order-7")).await.unwrap().id;
    store.enqueue(&queue("elsewhere"), NewJob::new("other").dedup_id("order-8")).await.unwrap();
    assert_eq!(store.job_by_dedup(&q, "order-7").await, Ok(Some(id)));
    assert_eq!(store.job_by_dedup(&q, "order-8").await, Ok(None), "another queue's dedup id");
    assert_eq!(store.job_by_dedup(&q, "never").await, Ok(None));
    let window = store.queue_get(&q).await.unwrap().config.dedup_window_ms;
    clock.advance(window + 1);
    assert_eq!(store.job_by_dedup(&q, "order-7").await, Ok(None), "past the dedup window");
    let unknown = queue("never-made");
    assert_eq!(store.job_by_dedup(&unknown, "x").await, Err(Error::QueueNotFound(unknown.clone())));
}

/// `idempotency_get` reads a key's record as stored: a claim in progress (owner, its expiry),
/// then the completed record (result, its expiry); `None` for a key never claimed or released.
pub async fn idempotency_get_reads_a_key_as_stored<B: InspectBackend>(backend: &B) {
    use onceq_core::{Begin, Complete, IdempotencyRecord, IdempotencyStore};
    let clock = ManualClock::at_default_start();
    let opened = backend.open(clock.clone()).await;
    let store = opened.store;
    assert_eq!(store.idempotency_get("order-1").await, Ok(None));
    let begin = Begin { key: "order-1".into(), owner: "worker-a".into(), ttl_ms: 30_000, fingerprint: None };
    store.idempotency_begin(begin).await.unwrap();
    let claimed = IdempotencyRecord {
        key: "order-1".into(),
        completed: false,
        owner: "worker-a".into(),
        until: clock.now().plus_ms(30_000),
        result: None,
    };
    assert_eq!(store.idempotency_get("order-1").await, Ok(Some(claimed.clone())));
    clock.advance(1_000);
    let complete = Complete {
        key: "order-1".into(),
        owner: "worker-a".into(),
        result: br#"{"charged":true}"#.to_vec(),
        retention_ms: 60_000,
    };
    store.idempotency_complete(complete).await.unwrap();
    let done = IdempotencyRecord {
        completed: true,
        until: clock.now().plus_ms(60_000),
        result: Some(br#"{"charged":true}"#.to_vec()),
        ..claimed
    };
    assert_eq!(store.idempotency_get("order-1").await, Ok(Some(done)));
    let begin = Begin { key: "order-2".into(), owner: "worker-b".into(), ttl_ms: 30_000, fingerprint: None };
    store.idempotency_begin(begin).await.unwrap();
    store.idempotency_release("order-2", "worker-b").await.unwrap();
    assert_eq!(store.idempotency_get("order-2").await, Ok(None), "a released key has no record");
}

/// The functions of this suite, as `inspect_suite!` lists them.
pub const SUITE: &[&str] = crate::inspect_suite!(@list @names;);

/// Expands to one `#[tokio::test]` per [`Inspect`] conformance function.
#[macro_export]
macro_rules! inspect_suite {
    (@tests $backend:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::inspect::$name(&$backend).await;
            }
        )*
    };
    (@names; $($name:ident),* $(,)?) => {
        &[$(stringify!($name)),*]
    };
    (@list $($arm:tt)*) => {
        $crate::inspect_suite! { $($arm)*
            job_page_lists_one_state_by_id,
            job_by_dedup_names_the_job_while_the_entry_lasts,
            idempotency_get_reads_a_key_as_stored,
        }
    };
    ($backend:expr) => {
        $crate::inspect_suite! { @list @tests $backend; }
    };
}
