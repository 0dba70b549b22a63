//! The embedded store passes the `Inspect` conformance suite (the dashboard's bounded reads).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use onceq_core::Clock;
use onceq_sqlite::{SqliteOptions, SqliteStore};
use onceq_testkit::inspect::InspectBackend;
use onceq_testkit::Opened;

struct Embedded;

#[async_trait]
impl InspectBackend for Embedded {
    type Store = SqliteStore;

    async fn open(&self, clock: Arc<dyn Clock>) -> Opened<SqliteStore> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = SqliteStore::open(SqliteOptions::new(dir.path()).clock(clock)).unwrap_or_else(|e| panic!("{e}"));
        Opened { store, guard: Box::new(dir) }
    }
}

onceq_testkit::inspect_suite!(Embedded);

/// Ready and leased jobs have no (queue, state, id) index on the embedded store (it would cost
/// every job's writes): their pages walk job ids, at most 100,000 a page, so a queue whose ready
/// jobs are far apart gets short pages that say where to go on, and paging still finds them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_page_walks_ids_a_bounded_window_and_goes_on_where_it_stopped() {
    use onceq_core::limits::ENQUEUE_BATCH_MAX;
    use onceq_core::{Inspect, JobPage, JobState, NewJob, QueueName, Store};

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = SqliteStore::open(SqliteOptions::new(dir.path()).durability(onceq_sqlite::Durability::Relaxed))
        .unwrap_or_else(|e| panic!("{e}"));
    let (sparse, crowd) = (QueueName::new("sparse").unwrap(), QueueName::new("crowd").unwrap());
    let ids = |enqueued: Vec<onceq_core::Enqueued>| enqueued.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let mut wanted = ids(store.job_enqueue(&sparse, vec![NewJob::new("a"), NewJob::new("b")]).await.unwrap());
    for _ in 0..150_000 / ENQUEUE_BATCH_MAX {
        let jobs = (0..ENQUEUE_BATCH_MAX).map(|_| NewJob::new("x")).collect();
        store.job_enqueue(&crowd, jobs).await.unwrap();
    }
    wanted.extend(ids(store.job_enqueue(&sparse, vec![NewJob::new("c")]).await.unwrap()));

    let page = |after| JobPage { state: JobState::Ready, after, limit: 50 };
    let first = store.job_page(&sparse, page(None)).await.unwrap();
    assert_eq!(first.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), wanted[..2]);
    let stop = first.next.expect("a short page at the walk's bound says where it stopped");
    assert!(stop.get() >= 100_000 && stop < wanted[2], "{stop}");
    let second = store.job_page(&sparse, page(Some(stop))).await.unwrap();
    assert_eq!(second.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), wanted[2..]);
    assert_eq!(second.next, None, "the walk reached the last id");
    // A state that has the index reads only what it shows.
    let none = store.job_page(&sparse, JobPage { state: JobState::Dead, after: None, limit: 50 }).await.unwrap();
    assert_eq!((none.jobs.len(), none.next), (0, None));
    store.close().await;
}
