//! What readers and the writer share about durability: which commits are on disk, and whether
//! the store stopped (module `sync` says what a reply and a read wait for, and why).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use onceq_core::{Error, Result};
use tokio::sync::Notify;

/// What readers and the writer share about durability.
pub(crate) struct Durable {
    /// Groups whose commit has begun: raised before each commit.
    committed: AtomicU64,
    /// The last group whose commit has begun and that must be on disk before anyone is told of
    /// it (it holds an `fsync` request or due work on an `fsync` queue): raised before its
    /// commit, so that a reader that saw the commit reads a number that includes it. Groups of
    /// `relaxed` requests only do not raise it: a read may show them before they are synced.
    durable_committed: AtomicU64,
    /// Groups known to be on disk.
    synced: AtomicU64,
    /// Woken after each sync and on failure.
    progress: Notify,
    /// The error every request gets once the store stopped: a sync failed, a thread stopped,
    /// or the data file turned out damaged.
    failed: Mutex<Option<Error>>,
}

impl Durable {
    pub(crate) fn new() -> Self {
        Durable {
            committed: AtomicU64::new(0),
            durable_committed: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            progress: Notify::new(),
            failed: Mutex::new(None),
        }
    }

    /// Numbers the next group, before its commit; returns its sequence number. `durable`: the
    /// group must be on disk before anyone is told of it, reads included.
    pub(crate) fn begin_commit(&self, durable: bool) -> u64 {
        let seq = self.committed.fetch_add(1, Ordering::SeqCst) + 1;
        if durable {
            self.durable_committed.fetch_max(seq, Ordering::SeqCst);
        }
        seq
    }

    /// Records that every group numbered up to `seq` is on disk, and wakes the reads that wait
    /// for it.
    pub(crate) fn mark_synced(&self, seq: u64) {
        self.synced.fetch_max(seq, Ordering::SeqCst);
        self.progress.notify_waiters();
    }

    /// How many groups are known to be on disk.
    #[cfg(test)]
    pub(crate) fn synced(&self) -> u64 {
        self.synced.load(Ordering::SeqCst)
    }

    /// The error every request gets once the store stopped (see [`Durable::fail`]).
    pub(crate) fn failure(&self) -> Option<Error> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the store: every later request and read gets [`Durable::failure`], which this
    /// returns (the first reason given wins).
    pub(crate) fn fail(&self, why: String) -> Error {
        self.stop(Error::Storage(format!(
            "the store stopped: {why}; what was committed since the last sync may not survive a power loss; close \
             the store and open it again"
        )))
    }

    /// Stops the store because its data file is damaged (fail-stop: a damaged page is not a
    /// transient failure, and serving around it could answer from wrong data). Every later
    /// request and read gets `error` ([`Error::Corrupt`]), and it is logged once.
    pub(crate) fn corrupt(&self, error: &Error) -> Error {
        if self.failure().is_none() {
            tracing::error!(%error, "the data file is damaged: the store stopped; restore it from a backup");
        }
        self.stop(error.clone())
    }

    fn stop(&self, error: Error) -> Error {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        let first = failed.get_or_insert(error).clone();
        drop(failed);
        self.progress.notify_waiters();
        first
    }

    /// Waits until every durable group (see [`Durable::begin_commit`]) begun so far is on disk.
    /// A read calls it after reading and before answering, so that it never reports a commit of
    /// an `fsync` queue that a power loss could undo. (What it shows of `relaxed` queues may be
    /// younger than the last sync, as their replies are.)
    pub(crate) async fn settled(&self) -> Result<()> {
        let target = self.durable_committed.load(Ordering::SeqCst);
        loop {
            let progress = self.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if let Some(error) = self.failure() {
                return Err(error);
            }
            if self.synced.load(Ordering::SeqCst) >= target {
                return Ok(());
            }
            progress.await;
        }
    }
}

/// Stops the store if the thread holding it panics: without the thread, commits would never be
/// known synced, and every read would wait for ever in [`Durable::settled`].
pub(crate) struct StopOnPanic<'a> {
    pub durable: &'a Durable,
    pub thread: &'static str,
}

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.durable.fail(format!("the store's {} thread panicked", self.thread));
        }
    }
}
