//! The writer thread: the only code that changes the data file.
//!
//! It owns the read-write connection and group-commits: it blocks for one request, drains every
//! other pending request, runs them all in one transaction, commits once, and only then answers
//! them (Invariant 1) — each request as durable as the queues it touched ask: a `relaxed` one at
//! commit, an `fsync` one through the syncer thread once the commit is on disk (module `sync`). A request that fails its checks writes nothing; a storage error rolls
//! the whole group back and every request in it gets the error. Before each transaction it
//! applies what the clock made due (module `due`). It keeps the queue configs and per-state job
//! counts in memory, publishing them to readers after each commit (module `cache`).
//!
//! Requests arrive checked: the store's entry points (`SqliteStore`'s `Store` methods) validate
//! each one before it is queued here, so the writer thread spends no time checking it again. It
//! checks only what needs its own state — a batch against its queue's config, `run_at` against
//! the transaction's clock reading — with the rules of `onceq_core::store::validate`.
//!
//! The crate's `# Layout` says what each file of this folder owns.

pub(crate) mod cache;
mod commits;
mod control;
pub(crate) use commits::producer_get;
mod dead;
mod due;
mod flow;
pub(crate) mod groups;
mod idempotency;
mod jobs;
mod keys;
mod leases;
pub(crate) mod op;
mod queues;
mod redrives;
mod schedules;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use onceq_core::{Durability, Error, ErrorKind, Result};
use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use crate::durable::StopOnPanic;
use crate::schema::storage;
use crate::sync::Syncer;
use crate::writer::cache::State;
use crate::writer::op::{Batch, Message, Op, Reply};

/// Most requests one group commit takes; the rest wait for the next.
const GROUP_COMMIT_REQUESTS_MAX: usize = 1024;
/// Longest the writer sleeps when nothing is due, so housekeeping still runs.
const IDLE_WAKE_MS_MAX: u64 = 1000;
/// How long the writer looks for new requests before it sleeps (see `poll_briefly`).
const WRITER_POLL_BEFORE_SLEEP: Duration = Duration::from_micros(50);

/// The writer thread's loop. Returns when told to shut down or when every sender is gone.
///
/// Each reply is answered as its request's durability says (module `sync`): a `relaxed` one right
/// after the commit; an `fsync` one once the write-ahead log is on disk, by the `syncer` thread
/// while the writer goes on with the next group, or by the writer itself when nothing else waits.
pub(crate) fn run(
    mut conn: Connection,
    mut state: State,
    inbox: Receiver<Message>,
    clock: Arc<dyn onceq_core::Clock>,
    lock: std::fs::File,
    syncer: Syncer,
) {
    let shared = state.shared.clone();
    let _stop_if_panicking = StopOnPanic { durable: &shared.durable, thread: "writer" };
    let mut shutdown: Vec<oneshot::Sender<()>> = Vec::new();
    // A request taken from the inbox after a commit, to start the next group with.
    let mut pending: Option<Message> = None;
    while shutdown.is_empty() {
        let now = clock.now();
        let next_due = state.next_due.min(state.next_schedule_due).min(state.next_redrive_due);
        let sleep_ms = u64::try_from(next_due.saturating_sub(now.as_millis())).unwrap_or(0).min(IDLE_WAKE_MS_MAX);
        let first = match pending.take().or_else(|| poll_briefly(&inbox)) {
            Some(message) => Some(message),
            None => match inbox.recv_timeout(Duration::from_millis(sleep_ms)) {
                Ok(message) => Some(message),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            },
        };
        let mut ops = Vec::new();
        let mut ticks = Vec::new();
        let mut take = |message: Message, ops: &mut Vec<Op>, ticks: &mut Vec<oneshot::Sender<()>>| match message {
            Message::Op(op) => ops.push(op),
            Message::Tick(reply) => ticks.extend(reply),
            Message::Shutdown(reply) => shutdown.push(reply),
        };
        if let Some(message) = first {
            take(message, &mut ops, &mut ticks);
        }
        while ops.len() < GROUP_COMMIT_REQUESTS_MAX {
            match inbox.try_recv() {
                Ok(message) => take(message, &mut ops, &mut ticks),
                Err(_) => break,
            }
        }
        let committed = group_commit(&mut conn, &mut state, clock.as_ref(), ops);
        // Whether the next group has a request already: then the sync is worth overlapping.
        if shutdown.is_empty() {
            pending = inbox.try_recv().ok();
        }
        answer(committed, &syncer, pending.is_some());
        for tick in ticks {
            let _ = tick.send(());
        }
    }
    // Stop accepting, then answer whatever raced with the shutdown. (No request is pending here:
    // none is taken once a shutdown is seen, and the inbox closing leaves none.)
    debug_assert!(pending.is_none());
    let mut rest: Vec<Op> = Vec::new();
    let mut ticks = Vec::new();
    for message in inbox.try_iter() {
        match message {
            Message::Op(op) => rest.push(op),
            Message::Tick(reply) => ticks.extend(reply),
            Message::Shutdown(reply) => shutdown.push(reply),
        }
    }
    if !rest.is_empty() || !ticks.is_empty() {
        let committed = group_commit(&mut conn, &mut state, clock.as_ref(), rest);
        answer(committed, &syncer, false);
    }
    for tick in ticks {
        let _ = tick.send(());
    }
    // Every reply is sent, and the log synced, before the checkpoint and the unlock.
    syncer.finish();
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
    drop(conn);
    drop(lock); // the data directory is free before `close` returns
    for reply in shutdown {
        let _ = reply.send(());
    }
}

/// Answers a committed group: its `relaxed` replies at once, and the rest through the syncer
/// once the group is durable, if anything in it must be (module `sync`).
fn answer(mut committed: Batch, syncer: &Syncer, more_requests: bool) {
    for reply in committed.relaxed.drain(..) {
        reply(committed.outcome.clone());
    }
    if committed.durable {
        syncer.submit(committed, more_requests);
    } else {
        debug_assert!(committed.replies.is_empty(), "a group with fsync replies was not marked durable");
    }
}

/// Looks for a request for a few microseconds before the writer goes to sleep: a client that was
/// just answered usually sends its next request at once, and catching it here saves a sleep and a
/// cross-CPU wake-up, which on a virtual machine costs more than the spin. Yields between looks so
/// that a client sharing this core can run.
fn poll_briefly(inbox: &Receiver<Message>) -> Option<Message> {
    let started = std::time::Instant::now();
    loop {
        if let Ok(message) = inbox.try_recv() {
            return Some(message);
        }
        if started.elapsed() >= WRITER_POLL_BEFORE_SLEEP {
            return None;
        }
        std::thread::yield_now();
    }
}

/// Runs `ops` in one transaction and commits once; returns the replies to send, with the
/// group's outcome, for [`answer`].
fn group_commit(conn: &mut Connection, state: &mut State, clock: &dyn onceq_core::Clock, ops: Vec<Op>) -> Batch {
    state.now = clock.now();
    let mut replies: Vec<Reply> = Vec::with_capacity(ops.len());
    let mut relaxed: Vec<Reply> = Vec::new();
    // Whether anything of the group must be on disk before it is told: an `fsync` request, or
    // due work on an `fsync` queue (reads wait for that; module `sync`).
    let mut durable = false;
    let changes_before = conn.total_changes();
    let mut seq = 0;
    state.touched_take();
    let result = (|| -> Result<()> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage("starting a transaction"))?;
        state.apply_due(&tx)?;
        durable |= state.touched_take() == Some(Durability::Fsync);
        // No savepoint per request: a request that returns a domain error (not found, invalid,
        // lease lost) has written nothing, because every check comes before the first write. A
        // storage error mid-request dooms the whole group instead: it rolls back, and every
        // request in it is told so — none was acknowledged, nothing of it was written. Savepoints
        // would make SQLite copy every page a request touches into a statement journal.
        let mut failure: Option<Error> = None;
        for op in ops {
            let (outcome, reply) = op(state, &tx);
            // What the request touched decides when it is answered (docs/design.md, "Per-queue
            // durability"): at commit if every queue it looked at is relaxed (or it looked at
            // none and the store is), else after the sync.
            match state.touched_take().unwrap_or(state.durability_default) {
                Durability::Fsync => {
                    durable = true;
                    replies.push(reply);
                }
                Durability::Relaxed => relaxed.push(reply),
            }
            if let Err(e) = outcome {
                if matches!(e.kind(), ErrorKind::Storage | ErrorKind::Corrupt) && failure.is_none() {
                    failure = Some(e);
                }
            }
        }
        if let Some(e) = failure {
            if e.kind() == ErrorKind::Corrupt {
                return Err(e);
            }
            return Err(Error::Storage(format!("{e}; the commit it was part of was rolled back, retry")));
        }
        state.persist_meta(&tx)?;
        // After a failed sync nothing more is committed (module `sync`): the group rolls back.
        if let Some(e) = state.shared.durable.failure() {
            return Err(e);
        }
        seq = state.shared.durable.begin_commit(durable);
        tx.commit().map_err(storage("committing"))?;
        Ok(())
    })();
    let outcome = match result {
        Ok(()) => {
            state.next_id_dirty = false;
            state.publish_dirty();
            state.wake_waiters();
            Ok(())
        }
        Err(error) => {
            // A damaged file stops the store: every later request gets the same error.
            let error = if error.kind() == ErrorKind::Corrupt { state.shared.durable.corrupt(&error) } else { error };
            tracing::error!(%error, "group commit failed; every request in it is answered with the error");
            // The transaction rolled back: forget what this group did to the in-memory state.
            state.woken.clear();
            state.groups_woken.clear();
            if let Err(reload_error) = state.reload(conn) {
                tracing::error!(error = %reload_error, "reloading state after a failed commit failed");
            }
            Err(error)
        }
    };
    // Every write a group makes is an INSERT, UPDATE or DELETE, which `total_changes` counts;
    // schema changes and PRAGMAs run only at open, before the first sync. A group that changes
    // the schema or runs maintenance (ANALYZE, VACUUM) must set `wrote` itself. A commit that
    // failed may still have reached the log: it is synced too.
    let wrote = conn.total_changes() != changes_before || (seq != 0 && outcome.is_err());
    Batch { seq, wrote, durable, outcome, replies, relaxed }
}
