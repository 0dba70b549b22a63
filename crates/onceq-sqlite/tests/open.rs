//! Opening a data directory: a fresh one works; a second opener, a foreign SQLite file, a file from a
//! newer onceq, and a damaged or unreadable file are each refused with a clear error and left
//! untouched; data survives close and reopen under both durability settings, and a queue's own
//! durability (a relaxed and an fsync queue side by side) with it; a page cache outside
//! its bounds is refused before anything is opened.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use onceq_core::{Error, NewJob, QueueName, Store, StoreExt};
use onceq_sqlite::{
    Durability, SqliteOptions, SqliteStore, DATA_FILE_NAME, PAGE_CACHE_BYTES_MAX, PAGE_CACHE_BYTES_MIN,
};

fn storage_message(result: onceq_core::Result<SqliteStore>) -> String {
    match result {
        Err(Error::Storage(message)) => message,
        Err(other) => panic!("expected a storage error, got {other:?}"),
        Ok(_) => panic!("expected the open to be refused"),
    }
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused_until_the_first_closes() {
    let dir = tempfile::tempdir().unwrap();
    let first = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let message = storage_message(SqliteStore::open(SqliteOptions::new(dir.path())));
    assert!(message.contains("in use by another onceq process"), "{message}");
    first.close().await;
    let second = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    second.close().await;
}

#[tokio::test]
async fn jobs_survive_close_and_reopen_with_either_durability() {
    for durability in [Durability::Fsync, Durability::Relaxed] {
        let dir = tempfile::tempdir().unwrap();
        let queue = QueueName::new("q").unwrap();
        let store = SqliteStore::open(SqliteOptions::new(dir.path()).durability(durability)).unwrap();
        let a = store.enqueue(&queue, NewJob::new("a")).await.unwrap();
        let b = store.enqueue(&queue, NewJob::new("b")).await.unwrap();
        let leased = store.lease_one(&queue).await.unwrap().unwrap();
        assert_eq!(leased.id, a.id);
        store.ack(leased.lease()).await.unwrap();
        store.close().await;

        let store = SqliteStore::open(SqliteOptions::new(dir.path()).durability(durability)).unwrap();
        assert_eq!(store.job_get(a.id).await, Err(Error::JobNotFound(a.id)));
        assert_eq!(store.job_get(b.id).await.unwrap().payload, b"b".to_vec());
        // Ids are never reused, even after the highest one was acked and the store reopened.
        let c = store.enqueue(&queue, NewJob::new("c")).await.unwrap();
        assert!(c.id > b.id, "{:?} should be above {:?}", c.id, b.id);
        store.close().await;
    }
}

#[tokio::test]
async fn relaxed_and_fsync_queues_survive_close_and_reopen_with_either_store_durability() {
    use onceq_core::QueueConfigPatch;
    for store_durability in [Durability::Fsync, Durability::Relaxed] {
        let dir = tempfile::tempdir().unwrap();
        let options = || SqliteOptions::new(dir.path()).durability(store_durability);
        let store = SqliteStore::open(options()).unwrap();
        let mut kept = Vec::new();
        for (name, durability) in [("fast", Durability::Relaxed), ("safe", Durability::Fsync)] {
            let queue = QueueName::new(name).unwrap();
            let patch = QueueConfigPatch { durability: Some(Some(durability)), ..QueueConfigPatch::default() };
            store.queue_upsert(&queue, patch).await.unwrap();
            let a = store.enqueue(&queue, NewJob::new("a")).await.unwrap();
            let b = store.enqueue(&queue, NewJob::new("b")).await.unwrap();
            let leased = store.lease_one(&queue).await.unwrap().unwrap();
            assert_eq!(leased.id, a.id);
            store.ack(leased.lease()).await.unwrap();
            kept.push((queue, durability, a.id, b.id));
        }
        store.close().await;

        let store = SqliteStore::open(options()).unwrap();
        for (queue, durability, acked, left) in kept {
            let info = store.queue_get(&queue).await.unwrap();
            assert_eq!(info.config.durability, Some(durability), "{store_durability:?}");
            assert_eq!(info.stats.ready, 1, "{queue} with store {store_durability:?}");
            assert_eq!(store.job_get(acked).await, Err(Error::JobNotFound(acked)));
            assert_eq!(store.job_get(left).await.unwrap().payload, b"b".to_vec());
        }
        store.close().await;
    }
}

#[tokio::test]
async fn ids_are_not_reused_after_the_newest_job_is_acked_and_the_store_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let queue = QueueName::new("q").unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let a = store.enqueue(&queue, NewJob::new("a")).await.unwrap();
    let leased = store.lease_one(&queue).await.unwrap().unwrap();
    store.ack(leased.lease()).await.unwrap();
    store.close().await;
    let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
    let b = store.enqueue(&queue, NewJob::new("b")).await.unwrap();
    assert!(b.id > a.id);
    store.close().await;
}

#[test]
fn a_file_from_a_newer_onceq_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = SqliteStore::open(SqliteOptions::new(dir.path())).unwrap();
        store.enqueue(&QueueName::new("q").unwrap(), NewJob::new("kept")).await.unwrap();
        store.close().await;
    });
    let path = dir.path().join(DATA_FILE_NAME);
    rusqlite::Connection::open(&path).unwrap().execute_batch("PRAGMA user_version = 99;").unwrap();
    let before = std::fs::read(&path).unwrap();
    let message = storage_message(SqliteStore::open(SqliteOptions::new(dir.path())));
    assert!(message.contains("newer onceq (schema version 99)"), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "a refused file must not be modified");
}

#[test]
fn a_foreign_sqlite_file_is_refused_and_left_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DATA_FILE_NAME);
    rusqlite::Connection::open(&path).unwrap().execute_batch("CREATE TABLE invoices (id INTEGER);").unwrap();
    let before = std::fs::read(&path).unwrap();
    let message = storage_message(SqliteStore::open(SqliteOptions::new(dir.path())));
    assert!(message.contains("not an onceq data file"), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn a_garbage_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DATA_FILE_NAME);
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let message = storage_message(SqliteStore::open(SqliteOptions::new(dir.path())));
    assert!(message.contains("not an onceq data file, or it is damaged"), "{message}");
    assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
}

#[test]
fn a_data_directory_that_is_a_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let message = storage_message(SqliteStore::open(SqliteOptions::new(&not_a_dir)));
    assert!(message.contains("cannot create data directory"), "{message}");
}

#[test]
fn an_unreadable_data_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the data file should be cannot be opened as a database.
    std::fs::create_dir(dir.path().join(DATA_FILE_NAME)).unwrap();
    let message = storage_message(SqliteStore::open(SqliteOptions::new(dir.path())));
    assert!(message.contains("cannot open"), "{message}");
}

#[tokio::test]
async fn a_page_cache_outside_its_bounds_is_refused_and_one_within_them_opens() {
    for bytes in [0, PAGE_CACHE_BYTES_MIN - 1, PAGE_CACHE_BYTES_MAX + 1] {
        let dir = tempfile::tempdir().unwrap();
        match SqliteStore::open(SqliteOptions::new(dir.path()).page_cache_bytes(bytes)) {
            Err(Error::InvalidRequest(message)) => assert!(message.contains("page_cache_bytes"), "{message}"),
            Err(other) => panic!("{bytes} bytes: expected an invalid request, got {other:?}"),
            Ok(_) => panic!("{bytes} bytes: expected the open to be refused"),
        }
        assert!(!dir.path().join(DATA_FILE_NAME).exists(), "{bytes} bytes: a refused open wrote a data file");
    }
    let dir = tempfile::tempdir().unwrap();
    let queue = QueueName::new("q").unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path()).page_cache_bytes(PAGE_CACHE_BYTES_MIN)).unwrap();
    let enqueued = store.enqueue(&queue, NewJob::new("a")).await.unwrap();
    assert_eq!(store.lease_one(&queue).await.unwrap().map(|job| job.id), Some(enqueued.id));
    store.close().await;
}

/// Issue 25: an empty (0-byte) data file is refused, never taken as a new, empty store, and left
/// as it is; a new store's file is made whole under a temporary name and renamed into place, so a
/// first start that stopped half-way leaves no `onceq.db` behind, and its leftover is replaced.
#[tokio::test]
async fn an_empty_data_file_is_refused_and_a_new_store_appears_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DATA_FILE_NAME);
    std::fs::write(&path, b"").unwrap();
    let message = storage_message(SqliteStore::open(SqliteOptions::new(dir.path())));
    assert!(message.contains("empty (0 bytes)") && message.contains("backup"), "{message}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0, "the empty file was written to");

    // A first start that stopped half-way left a partial `onceq.db.creating` (and no `onceq.db`).
    let fresh = tempfile::tempdir().unwrap();
    let creating = fresh.path().join(format!("{DATA_FILE_NAME}.creating"));
    std::fs::write(&creating, b"half a file").unwrap();
    let store = SqliteStore::open(SqliteOptions::new(fresh.path())).unwrap();
    let q = QueueName::new("q").unwrap();
    store.job_enqueue(&q, vec![NewJob::new("kept")]).await.unwrap();
    store.close().await;
    assert!(!creating.exists(), "the leftover is gone");
    let names: Vec<String> = std::fs::read_dir(fresh.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("creating")), "{names:?}");
    let store = SqliteStore::open(SqliteOptions::new(fresh.path())).unwrap();
    assert_eq!(store.queue_get(&q).await.unwrap().stats.ready, 1);
    store.close().await;
}
