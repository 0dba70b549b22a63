//! Pipelined durability: the syncer thread makes commits durable while the writer goes on.
//!
//! With [`Durability::Fsync`](crate::Durability::Fsync) the writer commits with
//! `synchronous=NORMAL`, which appends the transaction to the write-ahead log without waiting for
//! the disk, and hands the group's replies to this thread. The syncer `fdatasync`s the log and
//! only then answers them. One sync covers every group committed before it began, so while the
//! disk flushes one sync the writer runs the next groups, and the sync after takes all of them:
//! the writer's work and the disk's wait overlap instead of taking turns, as they do with
//! `synchronous=FULL`, where SQLite syncs inside every commit. When there is nothing to overlap
//! (no request waits for the writer, no batch for the syncer), the writer syncs and answers
//! itself, and a lone client pays no hand-off between threads.
//!
//! What a reply promises is unchanged (docs/design.md, Invariant 1): no request is answered before
//! everything it wrote, and everything it read, is on disk.
//! - Writer replies: group `n`'s replies wait for a sync that began after group `n` committed
//!   (a group that wrote nothing waits until every earlier group is synced). Syncs run one after
//!   another, so that sync also covers every earlier group whose effects group `n` may have read
//!   (a lease of a job enqueued one group before).
//! - Reads on the reader connections, and the queue views the writer publishes, may see a commit
//!   whose sync is still running. [`Durable::settled`] makes such a read wait, before it answers,
//!   until everything committed when it finished reading is synced: nobody is told of a job that
//!   a power loss could still take back.
//! - A failed sync poisons the store. The log's pages may already be marked clean (Linux reports
//!   a write-back error once), so a later successful sync would prove nothing. Every request in
//!   the failed sync, every later request and every later read gets [`Error::Storage`]; the data
//!   directory must be closed and opened again. Opening checkpoints the log into the data file
//!   before anything else, which writes its pages afresh (they may still be in memory only, marked
//!   clean) and syncs the data file. A panic of the writer or syncer thread stops the store the
//!   same way, rather than leave reads waiting for a sync that never comes.
//!
//! Checkpoints stay safe: with `synchronous=NORMAL` SQLite itself syncs the log before copying it
//! into the database file, and syncs the database file before it reuses the log.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, SendError, Sender};
use std::sync::{Arc, Mutex};

use onceq_core::{Error, Result};

use crate::durable::{Durable, StopOnPanic};
use crate::writer::op::Batch;

/// Makes the write-ahead log durable: `fdatasync` on it in production.
pub(crate) type SyncFn = Box<dyn FnMut() -> io::Result<()> + Send>;

/// What the writer and the syncer thread share: the sync itself, and how many batches the
/// syncer holds.
struct Syncing {
    sync: Mutex<SyncFn>,
    /// Batches handed to the syncer and not yet answered.
    in_flight: AtomicU64,
    /// Whether the writer syncs itself when nothing else waits (always, outside tests).
    inline_when_idle: bool,
    durable: Arc<Durable>,
}

impl Syncing {
    /// Syncs once if any of `batches` wrote, then answers them all.
    fn settle(&self, batches: Vec<Batch>) {
        let durable = &self.durable;
        let last = batches.iter().map(|b| b.seq).max().unwrap_or(0);
        let result = match durable.failure() {
            Some(error) => Err(error),
            None if batches.iter().any(|b| b.wrote) => {
                let mut sync = self.sync.lock().unwrap_or_else(|p| p.into_inner());
                // A sync that panics is a failed sync: the thread running it (the writer or the
                // syncer) goes on, and answers every request with the store's failure.
                let synced = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut *sync))
                    .unwrap_or_else(|_| Err(io::Error::other("the sync panicked")));
                synced.map_err(|e| {
                    tracing::error!(error = %e, "syncing the write-ahead log failed; the store refuses every request from now on");
                    durable.fail(format!("the write-ahead log could not be synced to disk ({e})"))
                })
            }
            None => Ok(()),
        };
        if result.is_ok() {
            durable.mark_synced(last);
        }
        for batch in batches {
            let outcome = batch.outcome.and(result.clone());
            for reply in batch.replies {
                reply(outcome.clone());
            }
        }
    }
}

/// The writer's handle on the syncer thread (durability `fsync`).
pub(crate) struct Syncer {
    syncing: Arc<Syncing>,
    batches: Sender<Batch>,
    thread: std::thread::JoinHandle<()>,
}

impl Syncer {
    /// Starts the syncer thread; `sync` makes the log durable.
    pub(crate) fn start(sync: SyncFn, durable: Arc<Durable>, inline_when_idle: bool) -> Result<Self> {
        let syncing =
            Arc::new(Syncing { sync: Mutex::new(sync), in_flight: AtomicU64::new(0), inline_when_idle, durable });
        let (batches, inbox) = channel();
        let thread_syncing = syncing.clone();
        let thread = std::thread::Builder::new()
            .name("onceq-syncer".into())
            .spawn(move || run(&thread_syncing, inbox))
            .map_err(|e| Error::Storage(format!("cannot start the syncer thread: {e}")))?;
        Ok(Syncer { syncing, batches, thread })
    }

    /// Answers a committed group once it is durable. When nothing else is waiting — no request
    /// for the writer (`more_requests` false), no batch with the syncer — there is no work to
    /// overlap with the sync, and the writer syncs and answers itself: a lone client then pays
    /// no hand-off to another thread. Otherwise the syncer takes it, and the writer goes on.
    pub(crate) fn submit(&self, batch: Batch, more_requests: bool) {
        let idle = !more_requests && self.syncing.in_flight.load(Ordering::SeqCst) == 0;
        if idle && self.syncing.inline_when_idle {
            // Every earlier batch is answered, so it was synced (or the store stopped). That is
            // what lets a batch that wrote nothing be answered here without a sync; a batch
            // that wrote is covered by its own sync either way.
            self.syncing.settle(vec![batch]);
            return;
        }
        self.syncing.in_flight.fetch_add(1, Ordering::SeqCst);
        if let Err(SendError(batch)) = self.batches.send(batch) {
            // The syncer is gone (it panicked): nobody may be told that this is durable.
            let error = self.syncing.durable.fail("the store's syncer thread stopped".into());
            for reply in batch.replies {
                reply(Err(error.clone()));
            }
        }
    }

    /// Lets the syncer answer what it holds, then waits for it to stop.
    pub(crate) fn finish(self) {
        drop(self.batches);
        if self.thread.join().is_err() {
            tracing::error!("the syncer thread panicked");
        }
    }
}

/// The syncer thread's loop: takes every batch that is waiting, syncs once, answers them all.
/// Returns when the writer drops its sender (after handing over its last batch).
fn run(syncing: &Syncing, inbox: Receiver<Batch>) {
    let _stop_if_panicking = StopOnPanic { durable: &syncing.durable, thread: "syncer" };
    while let Ok(first) = inbox.recv() {
        let mut batches = vec![first];
        batches.extend(inbox.try_iter());
        let n = batches.len() as u64;
        syncing.settle(batches);
        syncing.in_flight.fetch_sub(n, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::AtomicBool;
    use std::sync::Condvar;
    use std::time::Duration;

    use onceq_core::{ErrorKind, LeaseOptions, NewJob, QueueConfigPatch, QueueName, Store, StoreExt};

    use super::*;
    use crate::writer::op::Reply;
    use crate::{SqliteOptions, SqliteStore};

    /// A sync the test holds shut, counts and can make fail.
    #[derive(Default)]
    struct Gate {
        shut: Mutex<bool>,
        opened: Condvar,
        /// Syncs begun, counted before waiting at the gate.
        entered: AtomicU64,
        syncs: AtomicU64,
        fail: AtomicBool,
        panic: AtomicBool,
    }

    impl Gate {
        fn sync_fn(self: &Arc<Self>) -> SyncFn {
            let gate = self.clone();
            Box::new(move || {
                gate.entered.fetch_add(1, Ordering::SeqCst);
                let mut shut = gate.shut.lock().unwrap();
                while *shut {
                    shut = gate.opened.wait(shut).unwrap();
                }
                gate.syncs.fetch_add(1, Ordering::SeqCst);
                assert!(!gate.panic.load(Ordering::SeqCst), "injected: the syncer panics");
                if gate.fail.load(Ordering::SeqCst) {
                    return Err(io::Error::other("injected: the disk is gone"));
                }
                Ok(())
            })
        }

        fn set_shut(&self, shut: bool) {
            *self.shut.lock().unwrap() = shut;
            self.opened.notify_all();
        }
    }

    /// Opens a store whose syncs go through `gate`: all on the syncer thread (`inline` false:
    /// the path where the writer runs ahead of the disk), or as in production.
    fn open(dir: &std::path::Path, gate: &Arc<Gate>, inline: bool) -> SqliteStore {
        SqliteStore::open_with_sync(SqliteOptions::new(dir), Some(gate.sync_fn()), inline).unwrap()
    }

    /// What the writer shares with the syncer, for tests that drive the syncer without a store.
    fn durable() -> Arc<Durable> {
        Arc::new(Durable::new())
    }

    /// A data directory, its gate, a store opened on them, and a queue in it.
    async fn setup(inline: bool) -> (tempfile::TempDir, Arc<Gate>, SqliteStore, QueueName) {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let store = open(dir.path(), &gate, inline);
        let q = queue(&store).await;
        (dir, gate, store, q)
    }

    async fn queue(store: &SqliteStore) -> QueueName {
        let name = QueueName::new("q").unwrap();
        store.queue_upsert(&name, QueueConfigPatch::default()).await.unwrap();
        name
    }

    const PATIENCE: Duration = Duration::from_millis(200);

    #[test]
    fn the_writer_answers_itself_only_when_the_syncer_holds_nothing() {
        let (durable, gate) = (durable(), Arc::new(Gate::default()));
        let syncer = Syncer::start(gate.sync_fn(), durable.clone(), true).unwrap();
        let answered = |flag: &Arc<AtomicBool>| -> Reply {
            let flag = flag.clone();
            Box::new(move |outcome: Result<()>| {
                outcome.unwrap();
                flag.store(true, Ordering::SeqCst);
            })
        };
        let (first, second) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        gate.set_shut(true);
        let seq = durable.begin_commit(true);
        // More requests wait: the syncer takes the batch, and blocks on the gate.
        syncer.submit(
            Batch {
                seq,
                wrote: true,
                durable: true,
                outcome: Ok(()),
                replies: vec![answered(&first)],
                relaxed: Vec::new(),
            },
            true,
        );
        while gate.entered.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Nothing waits, and this group wrote nothing; but the syncer holds a batch, so this one
        // must queue behind it rather than be answered at once.
        let seq = durable.begin_commit(true);
        syncer.submit(
            Batch {
                seq,
                wrote: false,
                durable: true,
                outcome: Ok(()),
                replies: vec![answered(&second)],
                relaxed: Vec::new(),
            },
            false,
        );
        std::thread::sleep(PATIENCE);
        assert!(!first.load(Ordering::SeqCst) && !second.load(Ordering::SeqCst), "answered before the sync");
        gate.set_shut(false);
        syncer.finish();
        assert!(first.load(Ordering::SeqCst) && second.load(Ordering::SeqCst));
        assert_eq!(durable.synced(), 2);
    }

    #[test]
    fn an_idle_writer_syncs_and_answers_itself() {
        let (durable, gate) = (durable(), Arc::new(Gate::default()));
        let syncer = Arc::new(Syncer::start(gate.sync_fn(), durable.clone(), true).unwrap());
        let answered = Arc::new(AtomicBool::new(false));
        gate.set_shut(true);
        let seq = durable.begin_commit(true);
        let submitting = std::thread::spawn({
            let (syncer, answered) = (syncer.clone(), answered.clone());
            move || {
                let reply: Reply = Box::new(move |outcome: Result<()>| {
                    outcome.unwrap();
                    answered.store(true, Ordering::SeqCst);
                });
                syncer.submit(
                    Batch {
                        seq,
                        wrote: true,
                        durable: true,
                        outcome: Ok(()),
                        replies: vec![reply],
                        relaxed: Vec::new(),
                    },
                    false,
                );
            }
        });
        std::thread::sleep(PATIENCE);
        // Nothing else waits: the calling (writer) thread syncs itself, so it is the one held at
        // the gate, and the syncer thread was handed nothing.
        assert!(!submitting.is_finished() && !answered.load(Ordering::SeqCst));
        assert_eq!(syncer.syncing.in_flight.load(Ordering::SeqCst), 0);
        gate.set_shut(false);
        submitting.join().unwrap();
        assert!(answered.load(Ordering::SeqCst), "answered when submit returned");
        Arc::into_inner(syncer).unwrap().finish();
    }

    #[tokio::test]
    async fn no_reply_and_no_read_answers_before_the_log_is_synced() {
        for inline in [false, true] {
            no_reply_and_no_read_answers_before_the_log_is_synced_with(inline).await;
        }
    }

    async fn no_reply_and_no_read_answers_before_the_log_is_synced_with(inline: bool) {
        let (_dir, gate, store, q) = setup(inline).await;
        store.enqueue(&q, NewJob::new("a")).await.unwrap();

        gate.set_shut(true);
        let enqueue = tokio::spawn({
            let (store, q) = (store.clone(), q.clone());
            async move { store.enqueue(&q, NewJob::new("b")).await }
        });
        tokio::time::sleep(PATIENCE).await;
        // Committed, so the readers could see it, but not synced: neither the enqueue nor a read
        // that would count it answers.
        let read = tokio::spawn({
            let (store, q) = (store.clone(), q.clone());
            async move { store.queue_get(&q).await }
        });
        tokio::time::sleep(PATIENCE).await;
        assert!(!enqueue.is_finished(), "the enqueue was answered before its commit was synced");
        assert!(!read.is_finished(), "a read answered before the commit it saw was synced");

        gate.set_shut(false);
        enqueue.await.unwrap().unwrap();
        assert_eq!(read.await.unwrap().unwrap().stats.ready, 2);
        store.close().await;
    }

    #[tokio::test]
    async fn an_answer_that_wrote_nothing_still_waits_for_the_commits_before_it() {
        for inline in [false, true] {
            an_answer_that_wrote_nothing_still_waits_for_the_commits_before_it_with(inline).await;
        }
    }

    async fn an_answer_that_wrote_nothing_still_waits_for_the_commits_before_it_with(inline: bool) {
        let (_dir, gate, store, q) = setup(inline).await;
        store.enqueue(&q, NewJob::new("a")).await.unwrap();
        let job = store.lease_one(&q).await.unwrap().unwrap();

        gate.set_shut(true);
        let ack = tokio::spawn({
            let (store, lease) = (store.clone(), job.lease());
            async move { store.ack(lease).await }
        });
        tokio::time::sleep(PATIENCE).await;
        // The second ack writes nothing: the job is gone. But "gone" is only true once the first
        // ack is on disk. (As in production (`inline`), the first ack's sync holds the writer
        // itself, so the second is not even run; the unit test above drives the hand-off case.)
        let again = tokio::spawn({
            let (store, lease) = (store.clone(), job.lease());
            async move { store.ack(lease).await }
        });
        tokio::time::sleep(PATIENCE).await;
        assert!(!ack.is_finished(), "the ack was answered before its commit was synced");
        assert!(!again.is_finished(), "a stale ack was answered before the ack that made it stale was synced");

        gate.set_shut(false);
        ack.await.unwrap().unwrap();
        assert_eq!(again.await.unwrap().unwrap_err().kind(), ErrorKind::NotFound);
        store.close().await;
    }

    /// A queue named `name` with durability `durability`.
    async fn queue_with(store: &SqliteStore, name: &str, durability: crate::Durability) -> QueueName {
        let name = QueueName::new(name).unwrap();
        let patch = QueueConfigPatch { durability: Some(Some(durability)), ..QueueConfigPatch::default() };
        store.queue_upsert(&name, patch).await.unwrap();
        name
    }

    #[tokio::test]
    async fn a_relaxed_reply_does_not_wait_for_the_sync_and_an_fsync_reply_always_does() {
        use crate::Durability::{Fsync, Relaxed};
        // Every sync on the syncer thread: an idle writer that syncs itself (as in production)
        // would be the one held at the shut gate, and nothing would be answered meanwhile.
        for store_default in [Fsync, Relaxed] {
            mixed_replies_with(store_default).await;
        }
    }

    async fn mixed_replies_with(store_default: crate::Durability) {
        let inline = false;
        use onceq_core::commit::{Commit, CommitEnqueue};
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let options = SqliteOptions::new(dir.path()).durability(store_default);
        let store = SqliteStore::open_with_sync(options, Some(gate.sync_fn()), inline).unwrap();
        let fast = queue_with(&store, "fast", crate::Durability::Relaxed).await;
        let safe = queue_with(&store, "safe", crate::Durability::Fsync).await;
        let context = format!("store {store_default:?}, inline {inline}");

        gate.set_shut(true);
        // Sent together, the two often share a group commit: the relaxed one is answered at
        // commit, the fsync one only after the sync, either way.
        let (store_a, safe_a) = (store.clone(), safe.clone());
        let durable = tokio::spawn(async move { store_a.enqueue(&safe_a, NewJob::new("safe")).await });
        let relaxed = tokio::time::timeout(Duration::from_secs(5), store.enqueue(&fast, NewJob::new("fast"))).await;
        relaxed.unwrap_or_else(|_| panic!("{context}: a relaxed enqueue waited for the sync")).unwrap();
        let job = tokio::time::timeout(Duration::from_secs(5), store.lease_one(&fast)).await.unwrap().unwrap();
        let job = job.unwrap_or_else(|| panic!("{context}: the relaxed job is not leasable"));
        tokio::time::timeout(Duration::from_secs(5), store.ack(job.lease())).await.unwrap().unwrap();
        // A commit that touches both queues waits, as its fsync queue says.
        let (store_c, fast_c, safe_c) = (store.clone(), fast.clone(), safe.clone());
        let both = tokio::spawn(async move {
            let enqueue = vec![
                CommitEnqueue { queue: fast_c, jobs: vec![NewJob::new("fast 2")] },
                CommitEnqueue { queue: safe_c, jobs: vec![NewJob::new("safe 2")] },
            ];
            store_c.commit(Commit { enqueue, ..Commit::default() }).await
        });
        tokio::time::sleep(PATIENCE).await;
        assert!(!durable.is_finished(), "{context}: an fsync enqueue was answered before the sync");
        assert!(!both.is_finished(), "{context}: a commit touching an fsync queue was answered before the sync");

        gate.set_shut(false);
        durable.await.unwrap().unwrap();
        both.await.unwrap().unwrap();
        let ready = store.queue_get(&safe).await.unwrap().stats.ready;
        assert_eq!(ready, 2, "{context}");

        // With nothing of an fsync queue pending, a read shows relaxed work the disk has not got.
        gate.set_shut(true);
        store.enqueue(&fast, NewJob::new("fast 3")).await.unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), store.queue_get(&fast)).await;
        assert_eq!(read.expect("a read of relaxed work waited for a sync").unwrap().stats.ready, 2, "{context}");
        gate.set_shut(false);
        store.close().await;
    }

    #[tokio::test]
    async fn a_relaxed_store_without_fsync_queues_never_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let options = SqliteOptions::new(dir.path()).durability(crate::Durability::Relaxed);
        let store = SqliteStore::open_with_sync(options, Some(gate.sync_fn()), true).unwrap();
        let q = queue(&store).await;
        for i in 0..10 {
            store.enqueue(&q, NewJob::new(format!("{i}"))).await.unwrap();
        }
        let job = store.lease_one(&q).await.unwrap().unwrap();
        store.ack(job.lease()).await.unwrap();
        assert_eq!(store.queue_get(&q).await.unwrap().stats.ready, 9);
        assert_eq!(gate.syncs.load(Ordering::SeqCst), 0, "a relaxed store synced for relaxed work");
        // A queue set to fsync later is synced from then on.
        let safe = queue_with(&store, "safe", crate::Durability::Fsync).await;
        let before = gate.syncs.load(Ordering::SeqCst);
        store.enqueue(&safe, NewJob::new("safe")).await.unwrap();
        assert_eq!(gate.syncs.load(Ordering::SeqCst), before + 1, "an fsync enqueue was not synced");
        store.close().await;
    }

    #[tokio::test]
    async fn a_panicking_sync_stops_the_store_instead_of_leaving_reads_waiting() {
        for inline in [false, true] {
            a_panicking_sync_stops_the_store_instead_of_leaving_reads_waiting_with(inline).await;
        }
    }

    async fn a_panicking_sync_stops_the_store_instead_of_leaving_reads_waiting_with(inline: bool) {
        let (_dir, gate, store, q) = setup(inline).await;
        gate.panic.store(true, Ordering::SeqCst);
        assert!(store.enqueue(&q, NewJob::new("a")).await.is_err());
        let read = tokio::time::timeout(Duration::from_secs(5), store.queue_get(&q)).await;
        let error = read.expect("a read waited for a sync that never came").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Storage);
        assert!(error.to_string().contains("the sync panicked"), "{error}");
        assert!(store.enqueue(&q, NewJob::new("b")).await.is_err());
        store.close().await;
    }

    #[tokio::test]
    async fn groups_that_write_nothing_are_not_synced() {
        for inline in [false, true] {
            groups_that_write_nothing_are_not_synced_with(inline).await;
        }
    }

    async fn groups_that_write_nothing_are_not_synced_with(inline: bool) {
        let (_dir, gate, store, q) = setup(inline).await;
        let before = gate.syncs.load(Ordering::SeqCst);
        assert!(store.job_lease(&q, LeaseOptions::default()).await.unwrap().is_empty());
        assert_eq!(gate.syncs.load(Ordering::SeqCst), before, "an empty lease synced the log");
        store.enqueue(&q, NewJob::new("a")).await.unwrap();
        assert_eq!(gate.syncs.load(Ordering::SeqCst), before + 1);
        store.close().await;
    }

    #[tokio::test]
    async fn a_failed_sync_stops_the_store_until_it_is_opened_again() {
        for inline in [false, true] {
            a_failed_sync_stops_the_store_until_it_is_opened_again_with(inline).await;
        }
    }

    async fn a_failed_sync_stops_the_store_until_it_is_opened_again_with(inline: bool) {
        let (dir, gate, store, q) = setup(inline).await;
        let kept = store.enqueue(&q, NewJob::new("kept")).await.unwrap();

        gate.fail.store(true, Ordering::SeqCst);
        let error = store.enqueue(&q, NewJob::new("unsure")).await.unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Storage);
        assert!(error.to_string().contains("could not be synced"), "{error}");
        // From now on nothing is committed or read, even once the disk is back.
        gate.fail.store(false, Ordering::SeqCst);
        let syncs = gate.syncs.load(Ordering::SeqCst);
        let again = store.enqueue(&q, NewJob::new("refused")).await.unwrap_err();
        assert!(again.to_string().contains("open it again"), "{again}");
        assert!(store.queue_get(&q).await.is_err(), "a read answered after a failed sync");
        assert!(store.job_get(kept.id).await.is_err(), "a read answered after a failed sync");
        assert_eq!(gate.syncs.load(Ordering::SeqCst), syncs, "a stopped store synced again");
        store.close().await;

        // Opened again, the store works, with the job whose enqueue succeeded.
        let store = open(dir.path(), &gate, inline);
        assert_eq!(store.job_get(kept.id).await.unwrap().payload, b"kept".to_vec());
        let refused = store.queue_get(&q).await.unwrap().stats.ready;
        assert!(refused <= 2, "the refused enqueue was committed: {refused} ready");
        store.enqueue(&q, NewJob::new("after")).await.unwrap();
        store.close().await;
    }
}
