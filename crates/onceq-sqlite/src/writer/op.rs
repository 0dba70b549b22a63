//! What the writer thread receives, and what it hands the syncer: requests ([`Op`]), their
//! answers ([`Reply`]), and a committed group of answers ([`Batch`]). The loop, the syncer and the
//! store's entry points all speak these types; none of them owns the others.

use onceq_core::Result;
use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::writer::cache::State;

/// Answers a request once its transaction's fate is known.
pub(crate) type Reply = Box<dyn FnOnce(Result<()>) + Send>;
/// A request: runs inside the group transaction, returns whether it succeeded and its reply.
pub(crate) type Op = Box<dyn FnOnce(&mut State, &Connection) -> (Result<()>, Reply) + Send>;

/// What the writer thread receives.
pub(crate) enum Message {
    /// A request to run in the next group commit.
    Op(Op),
    /// Apply what is due now; answer when committed (if a sender is given).
    Tick(Option<oneshot::Sender<()>>),
    /// Finish pending requests, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// Wraps a typed request into an [`Op`] whose answer goes to `reply`.
pub(crate) fn op<T: Send + 'static>(
    f: impl FnOnce(&mut State, &Connection) -> Result<T> + Send + 'static,
    reply: oneshot::Sender<Result<T>>,
) -> Op {
    Box::new(move |state, conn| {
        let result = f(state, conn);
        let outcome = match &result {
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone()),
        };
        let answer: Reply = Box::new(move |committed: Result<()>| {
            let _ = reply.send(committed.and(result));
        });
        (outcome, answer)
    })
}

/// One committed (or rolled back) group, handed to the syncer.
pub(crate) struct Batch {
    /// Its number from [`Durable::begin_commit`](crate::durable::Durable::begin_commit).
    pub seq: u64,
    /// Whether it may have written to the log: a set of batches none of which did needs no
    /// sync (everything before them was synced by an earlier round).
    pub wrote: bool,
    /// Whether anything in it must be on disk before it is told (an `fsync` request, due work on
    /// an `fsync` queue): only such a batch goes to the syncer, and reads wait for it.
    pub durable: bool,
    /// The group's outcome: an error is passed on as is, after the sync.
    pub outcome: Result<()>,
    /// Replies that wait for the sync (requests that touched an `fsync` queue).
    pub replies: Vec<Reply>,
    /// Replies answered at commit (requests that touched only `relaxed` queues).
    pub relaxed: Vec<Reply>,
}
