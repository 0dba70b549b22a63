//! A queue worked as one member of a consumer group (docs/semantics.md, "Consumer groups").
//!
//! [`GroupOptions`] on a queue's [`QueueOptions`](crate::QueueOptions) make its runner lease
//! with `group_lease`, from the partitions the group gives this member only. A membership task
//! per queue joins, heartbeats on its own (so a slow handler never costs the session), follows
//! the member's partitions and calls the [`PartitionHooks`]:
//!
//! - **Gained** partitions: `on_assigned` runs first; only then may jobs of them start.
//! - **Lost** partitions (listed in `revoking`, or gone): no job of them starts any more; once
//!   no handler of them runs here, `on_revoked` runs, and only then are their jobs settled (the
//!   finished ones acked, nacked or failed, the ones leased but not started released). A
//!   partition listed in `revoking` stays ours while we hold a live lease in it, so holding the
//!   settles back makes `on_revoked` come before the store can hand the partition over. It
//!   cannot when the store moved it before this worker heard of it (its last lease here was
//!   settled meanwhile): then `on_revoked` comes late, though still after every handler run of
//!   it here.
//! - **Expired** (the store answers a heartbeat with `NotMember`): everything is lost as above,
//!   then the task joins again as a new member.
//! - **Shutdown**: once the runner's jobs are all settled, `on_revoked` for what is left, then
//!   `group_leave`, so that the others get the partitions at once instead of after the session
//!   timeout.
//!
//! Invariants: a job of partition `p` starts only while `p` is in `assigned`; `p` enters
//! `assigned` after `on_assigned(p)` returned and leaves it (for `closing`) before
//! `on_revoked(p)` is called, which waits until no handler of `p` runs here; a job of a
//! `closing` partition is not settled until `on_revoked(p)` returned.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use onceq_core::group::{GroupName, JoinOptions, MemberId, MemberView};
use onceq_core::limits::SESSION_TIMEOUT_MS_DEFAULT;
use onceq_core::{Error, QueueName, Store};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::report::Shared;

/// Shortest pause between join attempts while the store cannot serve; doubles up to the longest.
const JOIN_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between join attempts.
const JOIN_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Shortest pause between heartbeats, whatever the store suggests.
const HEARTBEAT_INTERVAL_MIN: Duration = Duration::from_millis(10);

/// Called when this worker gains or gives up partitions of a group's queue, so that a handler
/// can load or flush per-partition state. Both run on the membership task: while one runs no
/// heartbeat is sent, so a hook must return well within the session timeout (two thirds of it
/// at most), or the member expires and joins again.
#[async_trait]
pub trait PartitionHooks: Send + Sync + 'static {
    /// `partitions` (ascending) are now this worker's: no job of them has started here since
    /// they were last revoked, and none starts before this returns.
    async fn on_assigned(&self, _queue: &QueueName, _partitions: &[u32]) {}

    /// `partitions` (ascending) are no longer this worker's: no handler of them runs here, and
    /// none starts until they are assigned again. The jobs of them this worker still holds
    /// (finished, or leased and not started) are settled once this returns, so that the store
    /// cannot hand the partitions to another member before. That holds for every partition
    /// revoked while this worker held a lease in it; a partition the store moved before this
    /// worker learned of its revocation (its last lease here was settled meanwhile, or it
    /// expired) is revoked here late, possibly after another member's `on_assigned` for it.
    /// State flushed here should tolerate that: fence it with a version, or key it by job.
    async fn on_revoked(&self, _queue: &QueueName, _partitions: &[u32]) {}
}

/// How a queue's runner takes part in a consumer group. The queue must be a `per_key` one
/// (docs/semantics.md, "Consumer groups"); a group the store refuses for good (an unordered
/// queue, another group already consuming it) is logged and the queue is not worked, while a
/// store that cannot serve or a queue not created yet is retried with backoff.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use onceq_core::QueueName;
/// use onceq_sqlite::{SqliteOptions, SqliteStore};
/// use onceq_worker::{GroupOptions, JobContext, Outcome, PartitionHooks, QueueOptions, Worker};
///
/// struct Totals;
///
/// #[async_trait::async_trait]
/// impl PartitionHooks for Totals {
///     async fn on_assigned(&self, _queue: &QueueName, partitions: &[u32]) {
///         println!("load the running totals of partitions {partitions:?}");
///     }
///     async fn on_revoked(&self, _queue: &QueueName, partitions: &[u32]) {
///         println!("flush the running totals of partitions {partitions:?}");
///     }
/// }
///
/// # async fn demo() -> onceq_core::Result<()> {
/// let store = Arc::new(SqliteStore::open(SqliteOptions::new("./onceq-data"))?);
/// let group = GroupOptions::new("ledger-posting").session_timeout(Duration::from_secs(10)).hooks(Totals);
/// let worker = Worker::builder(store)
///     .handle_with("ledger", QueueOptions::concurrency(8).group(group), |ctx: JobContext, amount: i64| async move {
///         println!("post {amount} to account {:?} (partition {:?})", ctx.ordering_key, ctx.partition);
///         Outcome::Done
///     })
///     .build()?;
/// worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct GroupOptions {
    /// The group's name (checked when the worker is built).
    pub group: String,
    /// A name for people to read in `group_get` (host, process); default: the worker id.
    pub member_name: Option<String>,
    /// The member is expired when no heartbeat reaches the store for this long: then its
    /// partitions move to the others once its leases are settled or expired
    /// ([`SESSION_TIMEOUT_MS_MIN`](onceq_core::limits::SESSION_TIMEOUT_MS_MIN) to
    /// [`SESSION_TIMEOUT_MS_MAX`](onceq_core::limits::SESSION_TIMEOUT_MS_MAX) ms; default
    /// [`SESSION_TIMEOUT_MS_DEFAULT`]). Heartbeats go every third of it, on their own task.
    pub session_timeout: Duration,
    /// Called as partitions come and go.
    pub hooks: Option<Arc<dyn PartitionHooks>>,
}

impl fmt::Debug for GroupOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupOptions")
            .field("group", &self.group)
            .field("member_name", &self.member_name)
            .field("session_timeout", &self.session_timeout)
            .field("hooks", &self.hooks.as_ref().map(|_| "PartitionHooks"))
            .finish()
    }
}

impl GroupOptions {
    /// Membership of `group`, the rest at defaults.
    pub fn new(group: &str) -> Self {
        GroupOptions {
            group: group.to_owned(),
            member_name: None,
            session_timeout: Duration::from_millis(SESSION_TIMEOUT_MS_DEFAULT),
            hooks: None,
        }
    }

    /// Sets the member's name.
    pub fn member_name(mut self, name: &str) -> Self {
        self.member_name = Some(name.to_owned());
        self
    }

    /// Sets the session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Calls `hooks` as partitions come and go.
    pub fn hooks(mut self, hooks: impl PartitionHooks) -> Self {
        self.hooks = Some(Arc::new(hooks));
        self
    }

    /// The group's name and what the member asks for when it joins, checked against their limits.
    pub(crate) fn checked(&self, worker_id: &str) -> onceq_core::Result<(GroupName, JoinOptions)> {
        let group = GroupName::new(self.group.as_str())?;
        let session_timeout_ms = u64::try_from(self.session_timeout.as_millis()).unwrap_or(u64::MAX);
        let join = JoinOptions {
            name: Some(self.member_name.clone().unwrap_or_else(|| worker_id.to_owned())),
            session_timeout_ms: Some(session_timeout_ms),
        };
        join.validate()?;
        Ok((group, join))
    }
}

/// What the membership task, the fetch loop and the job tasks of one queue share.
#[derive(Debug, Default)]
pub(crate) struct MemberState {
    /// The member id while this worker is a member; `None` while it joins (again).
    member: Option<MemberId>,
    /// Joining failed for good: the queue is not worked.
    failed: bool,
    /// Partitions whose `on_assigned` returned and whose revocation has not begun: jobs of
    /// these, and only these, may start.
    assigned: BTreeSet<u32>,
    /// Partitions being given up: `on_revoked` is called once none of their jobs is in flight.
    closing: BTreeSet<u32>,
    /// Jobs leased and not yet settled, per partition.
    in_flight: BTreeMap<u32, usize>,
    /// Of those, the jobs whose handler runs or may still start, per partition.
    running: BTreeMap<u32, usize>,
    /// Heartbeats and joins tried so far: a fetch loop waiting for a fresh view watches it grow.
    views: u64,
}

impl MemberState {
    /// Whether no handler of `partition` runs here, nor may start.
    fn idle(&self, partition: u32) -> bool {
        !self.running.contains_key(&partition)
    }
}

/// Takes one from `partition`'s count, forgetting counts that reach zero.
fn decrement(counts: &mut BTreeMap<u32, usize>, partition: u32) {
    let count = counts.entry(partition).or_default();
    debug_assert!(*count > 0, "partition {partition} had no job counted");
    *count = count.saturating_sub(1);
    if *count == 0 {
        counts.remove(&partition);
    }
}

/// A fresh view asked of the membership task: the heartbeats tried and the member when asked.
#[derive(Debug, Clone)]
pub(crate) struct AskedView {
    views: u64,
    member: Option<MemberId>,
}

impl AskedView {
    /// Whether `state` has heard from the store since (or the membership changed or failed).
    fn answered(&self, state: &MemberState) -> bool {
        state.views > self.views || state.member != self.member || state.failed
    }
}

/// A job counted in flight in its partition until it is dropped (settled, given back, or lost),
/// and counted running until [`InFlight::ready_to_settle`] or the drop.
pub(crate) struct InFlight {
    state: Arc<watch::Sender<MemberState>>,
    partition: u32,
    /// Still counted in `running`.
    running: bool,
}

impl InFlight {
    /// The job's handler has ended, or will not run: waits, if its partition is being revoked,
    /// until `on_revoked` returned, so that the settle that follows cannot let the partition
    /// move before. Call it before every settle of the job.
    pub(crate) async fn ready_to_settle(&mut self) {
        if std::mem::take(&mut self.running) {
            self.state.send_modify(|s| decrement(&mut s.running, self.partition));
        }
        let mut watch = self.state.subscribe();
        let _ = watch.wait_for(|s| !s.closing.contains(&self.partition)).await;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.state.send_modify(|s| {
            if self.running {
                decrement(&mut s.running, self.partition);
            }
            decrement(&mut s.in_flight, self.partition);
        });
    }
}

/// One queue's membership in its group.
pub(crate) struct Membership<S: ?Sized> {
    store: Arc<S>,
    queue: QueueName,
    group: GroupName,
    join: JoinOptions,
    hooks: Option<Arc<dyn PartitionHooks>>,
    state: Arc<watch::Sender<MemberState>>,
    /// Asks the membership task for a heartbeat now (a lease found a partition it does not know).
    refresh: Notify,
    shared: Arc<Shared>,
}

impl<S: Store + ?Sized + 'static> Membership<S> {
    pub(crate) fn new(
        store: Arc<S>,
        queue: QueueName,
        group: GroupName,
        join: JoinOptions,
        hooks: Option<Arc<dyn PartitionHooks>>,
        shared: Arc<Shared>,
    ) -> Self {
        let (state, _) = watch::channel(MemberState::default());
        Membership { store, queue, group, join, hooks, state: Arc::new(state), refresh: Notify::new(), shared }
    }

    pub(crate) fn group(&self) -> &GroupName {
        &self.group
    }

    /// The member id to lease with, once joined; `None` when `stop` fires first or joining
    /// failed for good.
    pub(crate) async fn member(&self, stop: &CancellationToken) -> Option<MemberId> {
        let mut watch = self.state.subscribe();
        tokio::select! {
            state = watch.wait_for(|s| s.member.is_some() || s.failed) => state.ok()?.member.clone(),
            () = stop.cancelled() => None,
        }
    }

    /// Counts a leased job in flight in its partition (a job without one is not counted: it
    /// belongs to no partition the group shares). Done as soon as the lease call returns, so
    /// that a revocation waits for it.
    pub(crate) fn admit(&self, partition: Option<u32>) -> Option<InFlight> {
        let partition = partition?;
        self.state.send_modify(|s| {
            *s.in_flight.entry(partition).or_default() += 1;
            *s.running.entry(partition).or_default() += 1;
        });
        Some(InFlight { state: self.state.clone(), partition, running: true })
    }

    /// Whether a job of `partition` may start now.
    pub(crate) fn may_start(&self, partition: Option<u32>) -> bool {
        partition.is_none_or(|p| self.state.borrow().assigned.contains(&p))
    }

    /// Whether every partition of these is one whose jobs may start.
    pub(crate) fn knows(&self, partitions: impl IntoIterator<Item = Option<u32>>) -> bool {
        let state = self.state.borrow();
        partitions.into_iter().flatten().all(|p| state.assigned.contains(&p))
    }

    /// Has the membership task heartbeat now and waits until it did (or the membership was
    /// lost, or `stop` fired): after the store said we are not a member.
    pub(crate) async fn refresh(&self, stop: &CancellationToken) {
        let asked = self.ask_for_view();
        let mut watch = self.state.subscribe();
        tokio::select! {
            _ = watch.wait_for(|s| asked.answered(s)) => {}
            () = stop.cancelled() => {}
        }
    }

    /// Has the membership task heartbeat now, without waiting: after a lease found partitions
    /// not yet assigned here. The jobs of those wait in [`until_known`](Self::until_known), so
    /// that the jobs of partitions already assigned start at once.
    pub(crate) fn ask_for_view(&self) -> AskedView {
        let asked = {
            let state = self.state.borrow();
            AskedView { views: state.views, member: state.member.clone() }
        };
        self.refresh.notify_one();
        asked
    }

    /// Waits until a job of `partition` may start, or the view asked for came and says it may
    /// not (the partition is not ours, or the membership was lost), or `stop` fired. Then
    /// [`may_start`](Self::may_start) decides.
    pub(crate) async fn until_known(&self, partition: Option<u32>, asked: &AskedView, stop: &CancellationToken) {
        let Some(partition) = partition else { return };
        let mut watch = self.state.subscribe();
        tokio::select! {
            _ = watch.wait_for(|s| s.assigned.contains(&partition) || asked.answered(s)) => {}
            () = stop.cancelled() => {}
        }
    }

    /// Joins, heartbeats and follows the partitions until `drained` fires (the runner stopped
    /// and settled all its jobs), then revokes what is left and leaves.
    pub(crate) async fn run(self: Arc<Self>, drained: CancellationToken) {
        let mut backoff = JOIN_BACKOFF_MIN;
        'session: loop {
            let view = loop {
                match self.store.group_join(&self.queue, &self.group, self.join.clone()).await {
                    Ok(view) => break view,
                    Err(error @ (Error::Unavailable(_) | Error::QueueNotFound(_))) => {
                        tracing::warn!(%error, queue = %self.queue, group = %self.group, "joining failed; retrying after {backoff:?}");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = drained.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(JOIN_BACKOFF_MAX);
                    }
                    Err(error) => {
                        tracing::error!(%error, queue = %self.queue, group = %self.group, "cannot join the group; the queue is not worked");
                        self.state.send_modify(|s| s.failed = true);
                        return;
                    }
                }
            };
            backoff = JOIN_BACKOFF_MIN;
            self.shared.count(|r| r.group_joins += 1);
            tracing::info!(queue = %self.queue, group = %self.group, member = %view.member_id, "joined");
            let mut every = interval(&view);
            self.state.send_modify(|s| s.member = Some(view.member_id.clone()));
            self.apply(&view).await;
            self.state.send_modify(|s| s.views += 1);
            let mut next_beat = Instant::now() + every;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(next_beat) => {}
                    () = self.refresh.notified() => {}
                    settled = self.settled_closing() => {
                        self.revoke(settled).await;
                        continue;
                    }
                    () = drained.cancelled() => break 'session,
                }
                let heartbeat = self.store.group_heartbeat(&self.queue, &self.group, &view.member_id).await;
                next_beat = Instant::now() + every;
                match heartbeat {
                    Ok(fresh) => {
                        every = interval(&fresh);
                        self.apply(&fresh).await;
                        self.state.send_modify(|s| s.views += 1);
                    }
                    Err(Error::NotMember(_)) => {
                        tracing::warn!(queue = %self.queue, group = %self.group, member = %view.member_id,
                            "the group expired this member; settling its jobs and joining again");
                        self.shared.count(|r| r.group_expired += 1);
                        self.lose_all().await;
                        continue 'session;
                    }
                    Err(error) => {
                        tracing::warn!(%error, queue = %self.queue, group = %self.group, "a group heartbeat failed; trying again");
                        self.state.send_modify(|s| s.views += 1);
                    }
                }
            }
        }
        // Every job is settled: what is left is revoked at once, then the member leaves.
        let member = self.state.borrow().member.clone();
        self.lose_all().await;
        if let Some(member) = member {
            match self.store.group_leave(&self.queue, &self.group, &member).await {
                Ok(()) => tracing::info!(queue = %self.queue, group = %self.group, %member, "left"),
                Err(error) => {
                    tracing::warn!(%error, queue = %self.queue, group = %self.group, "leaving failed; the session expires instead")
                }
            }
        }
    }

    /// Follows a fresh view: lost partitions start closing at once (no job of them starts any
    /// more), gained ones are assigned after `on_assigned`. A partition still closing is not
    /// assigned again until its `on_revoked` ran: the next view after that gives it back.
    async fn apply(&self, view: &MemberView) {
        let ours: BTreeSet<u32> = view.partitions.iter().copied().collect();
        let mut gained = Vec::new();
        self.state.send_modify(|s| {
            let lost: Vec<u32> = s.assigned.difference(&ours).copied().collect();
            for p in lost {
                s.assigned.remove(&p);
                s.closing.insert(p);
            }
            gained = ours.iter().filter(|p| !s.assigned.contains(p) && !s.closing.contains(p)).copied().collect();
        });
        if gained.is_empty() {
            return;
        }
        if let Some(hooks) = &self.hooks {
            let (hooks, queue, partitions) = (hooks.clone(), self.queue.clone(), gained.clone());
            let called = tokio::spawn(async move { hooks.on_assigned(&queue, &partitions).await }).await;
            if let Err(error) = called {
                tracing::error!(%error, queue = %self.queue, ?gained, "on_assigned panicked; the partitions are worked anyway");
            }
        }
        self.state.send_modify(|s| s.assigned.extend(gained.iter().copied()));
    }

    /// Completes with the closing partitions where no handler runs any more, once there are
    /// some.
    async fn settled_closing(&self) -> Vec<u32> {
        let mut watch = self.state.subscribe();
        let settled = match watch.wait_for(|s| s.closing.iter().any(|p| s.idle(*p))).await {
            Ok(state) => Some(state.closing.iter().copied().filter(|p| state.idle(*p)).collect()),
            Err(_) => None,
        };
        match settled {
            Some(settled) => settled,
            // The sender lives as long as `self`: not reached.
            None => std::future::pending().await,
        }
    }

    /// Calls `on_revoked` for closing partitions where no handler runs, then lets their jobs
    /// settle.
    async fn revoke(&self, partitions: Vec<u32>) {
        debug_assert!(partitions.iter().all(|p| self.state.borrow().idle(*p)));
        if partitions.is_empty() {
            return;
        }
        if let Some(hooks) = &self.hooks {
            let (hooks, queue, revoked) = (hooks.clone(), self.queue.clone(), partitions.clone());
            let called = tokio::spawn(async move { hooks.on_revoked(&queue, &revoked).await }).await;
            if let Err(error) = called {
                tracing::error!(%error, queue = %self.queue, ?partitions, "on_revoked panicked");
            }
        }
        self.state.send_modify(|s| {
            for p in &partitions {
                s.closing.remove(p);
            }
        });
    }

    /// Gives up every partition: no job starts any more, running handlers finish, then
    /// `on_revoked` for all, then every job is settled (finished ones, or released); the member
    /// id is forgotten (the fetch loop waits for the next). Heartbeats are not needed meanwhile:
    /// the member is gone or leaving.
    async fn lose_all(&self) {
        self.state.send_modify(|s| {
            s.member = None;
            let assigned = std::mem::take(&mut s.assigned);
            s.closing.extend(assigned);
            s.views += 1;
        });
        let mut watch = self.state.subscribe();
        let _ = watch.wait_for(|s| s.running.is_empty()).await;
        let closing: Vec<u32> = self.state.borrow().closing.iter().copied().collect();
        self.revoke(closing).await;
        debug_assert!(self.state.borrow().assigned.is_empty() && self.state.borrow().closing.is_empty());
        // A new member starts with none of the old one's leases left.
        let _ = watch.wait_for(|s| s.in_flight.is_empty()).await;
    }
}

fn interval(view: &MemberView) -> Duration {
    Duration::from_millis(view.heartbeat_interval_ms).max(HEARTBEAT_INTERVAL_MIN)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use onceq_core::ErrorKind;

    #[test]
    fn options_are_checked_against_their_limits() {
        let (group, join) = GroupOptions::new("billing").checked("worker-1").unwrap();
        assert_eq!(group.as_str(), "billing");
        assert_eq!(join.name.as_deref(), Some("worker-1"), "the member is named after the worker by default");
        assert_eq!(join.session_timeout_ms, Some(SESSION_TIMEOUT_MS_DEFAULT));
        let (_, join) = GroupOptions::new("billing")
            .member_name("host-7")
            .session_timeout(Duration::from_secs(3))
            .checked("worker-1")
            .unwrap();
        assert_eq!((join.name.as_deref(), join.session_timeout_ms), (Some("host-7"), Some(3_000)));

        let refused = [
            GroupOptions::new(""),
            GroupOptions::new("two words"),
            GroupOptions::new("billing").session_timeout(Duration::from_millis(99)),
            GroupOptions::new("billing").session_timeout(Duration::from_secs(301)),
            GroupOptions::new("billing").member_name(""),
            GroupOptions::new("billing").member_name(&"m".repeat(129)),
        ];
        for options in refused {
            let error = options.checked("worker-1").unwrap_err();
            assert_eq!(error.kind(), ErrorKind::InvalidRequest, "{options:?}: {error}");
        }
    }
}
