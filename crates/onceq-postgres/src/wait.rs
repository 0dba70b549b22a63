//! Long polls: leases waiting for jobs, the notifications that wake them, and their timers.
//!
//! Every transaction that makes jobs ready (enqueue, nack or release without delay, redrive,
//! resume, scheduled jobs coming due, leases expiring, an ordering key moving on to its next
//! job) sends `NOTIFY` on the schema's channel
//! with `r <count> <queue>`, and one that schedules a job for later sends `s <run_at ms>
//! <queue>` — the most frequent of them only while a lease of the queue sleeps (see
//! "Sleeping").
//! PostgreSQL delivers them on commit, to every store sharing the database. Each store keeps
//! one listening connection ([`listen`]) and wakes its own waiters:
//!
//! - `r k q`: waiters of `q`, oldest first, until their asks cover `k` jobs. A woken lease that
//!   leaves work behind passes the wake-up on, so a wake-up taken by a lease that was already
//!   returning is not lost.
//! - `s t q`: waiters of `q` whose timer is later than `t`, so they re-arm it.
//!
//! Nobody commits when a scheduled job comes due or a lease expires, so each waiter also sleeps
//! on a timer: until the earliest scheduled `run_at` or lease expiry of its queue, read from the
//! database when it starts waiting, and never longer than [`TIMER_RECHECK_MS_MAX`]. A manual
//! clock (tests) pokes every waiter through `Clock::on_advance`, and so does the listener after
//! it reconnects, since notifications sent while it was away are lost.
//!
//! # Sleeping
//!
//! `NOTIFY` serializes the commits of the transactions that send it (PostgreSQL holds a global
//! lock on its notification queue from before each commit until it is flushed), so a `NOTIFY` in
//! every enqueue would make concurrent enqueues commit one at a time. The statements that make
//! jobs ready call the schema's `wake` instead, which notifies only while some store has a lease
//! of that queue registered as sleeping (table `sleepers`); a busy queue, whose leases find work
//! and never sleep, costs its enqueues a shared advisory lock and a one-row read.
//!
//! No wake-up is lost. Before its first sleep on a queue, a store (1) registers in `sleepers`
//! (committed), then (2) tries the queue's wake lock exclusively (`may_sleep`) — every `wake`
//! holds it shared until its transaction ends, and reads `sleepers` with a snapshot taken after
//! it got the lock — then (3) looks for jobs once more, and only then (4) sleeps. A transaction
//! that read `sleepers` before (1) still holds the lock shared, so (2) fails and the lease pauses
//! briefly ([`SLEEP_BLOCKED_MS`]) and looks again instead of sleeping (it never makes enqueues
//! wait for the lock); one that read it after (1) notifies, which wakes the lease when it
//! commits. If (2) succeeds, every transaction that missed the registration has ended, so (3)
//! sees its jobs. While the registration stays valid without a gap (it is renewed before it
//! lapses, [`REGISTRATION_MS`]), every later `wake` sees it, so the store's later sleeps on that
//! queue skip (1) to (3). A registration nobody renews lapses by itself: a store that died or
//! whose leases are all busy stops costing enqueues their `NOTIFY` within seconds.
//!
//! Scheduled jobs coming due, leases expiring, a queue created or resumed notify directly: they
//! are rare, and a lease waiting on a queue that does not exist yet or is paused has no queue to
//! register for.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::Notify;
use tokio::time::Instant;

/// A fresh random name for a store in `sleepers`.
pub(crate) fn sleeper_name() -> String {
    let mut bytes = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Longest a waiting lease sleeps before it looks again even if nothing woke it: a bound on
/// how late a missed notification (or a lease shortened elsewhere) can make it.
pub(crate) const TIMER_RECHECK_MS_MAX: u64 = 5_000;
/// Shortest sleep of a waiting lease whose timer is already due: the job it waits for is being
/// moved by another transaction right now.
pub(crate) const TIMER_DUE_SLEEP_MS: u64 = 5;
/// Pauses between attempts to reconnect the listener: doubling from the first to the last.
const LISTENER_RETRY_MS: (u64, u64) = (100, 5_000);
/// How long a registration in `sleepers` lasts by the database's clock (see "Sleeping").
pub(crate) const REGISTRATION_MS: u64 = 15_000;
/// How much sooner than [`REGISTRATION_MS`] the store counts its registration as ended: slack
/// for the two clocks disagreeing (the database's wall clock stepping, this process paused).
const REGISTRATION_SLACK_MS: u64 = 5_000;
/// A registration is renewed when it would end less than this after the sleep it must cover.
const REGISTRATION_MARGIN_MS: u64 = 1_000;
/// Registrations kept in memory before the lapsed ones are dropped.
const REGISTRATIONS_KEPT: usize = 256;
/// Pauses of a lease that may not sleep yet because a transaction that missed its registration
/// is still open: doubling from the first to the last, while it looks again after each.
pub(crate) const SLEEP_BLOCKED_MS: (u64, u64) = (5, 250);

/// One waiting lease.
struct Waiter {
    /// Identifies the registration, so that it can remove itself.
    id: u64,
    /// How many jobs it asks for.
    max_jobs: u32,
    /// Woken with `notify_one`, which keeps the wake-up if it is not yet waiting.
    notify: Arc<Notify>,
    /// When its timer fires, in store-clock milliseconds (`i64::MAX`: not armed yet).
    timer_at: Arc<AtomicI64>,
    /// Set when a notification woke it (rather than its timer or its end).
    woken: Arc<AtomicBool>,
}

/// The waiting leases of every queue of one store.
#[derive(Default)]
pub(crate) struct Waiters {
    queues: Mutex<HashMap<String, VecDeque<Waiter>>>,
    next_id: AtomicU64,
    /// This store's registrations in `sleepers`, by queue id (see "Sleeping").
    registered: Mutex<Registrations>,
}

#[derive(Default)]
struct Registrations {
    by_queue: HashMap<i64, Registered>,
    /// Bumped when every registration is forgotten, so that a renewal or check that was in
    /// flight meanwhile records nothing.
    generation: u64,
}

/// One registration of this store in `sleepers`.
#[derive(Debug, Clone, Copy)]
struct Registered {
    /// When it ends at the earliest, by this process's clock: from before the statement that
    /// wrote it was sent, less [`REGISTRATION_SLACK_MS`].
    until: Instant,
    /// Whether `may_sleep` succeeded while it was valid, with no gap since (steps 1 and 2).
    armed: bool,
}

/// What a lease about to sleep on a queue must do first (see "Sleeping").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SleepStep {
    /// Nothing: the store's registration covers the sleep. Sleep.
    Sleep,
    /// Register, or renew the registration, then record it with [`Waiters::registered`].
    Register(Renewal),
    /// Check that no transaction that missed the registration is still open (`may_sleep`),
    /// and if none is, record it with [`Waiters::armed`].
    Check(Ticket),
}

/// A registration being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Renewal {
    ticket: Ticket,
    /// The end of the registration it renews, if that one was armed: the renewal keeps it
    /// armed only if it is written before then (no gap).
    armed_until: Option<Instant>,
}

/// Names one registration, so that news of it cannot land on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    until: Instant,
    generation: u64,
}

/// A registration; dropping it withdraws the waiter if it was not woken.
pub(crate) struct Registration<'a> {
    waiters: &'a Waiters,
    queue: String,
    id: u64,
    /// Completes when a notification, a clock advance or a reconnect wakes this waiter.
    pub notify: Arc<Notify>,
    timer_at: Arc<AtomicI64>,
    woken: Arc<AtomicBool>,
}

impl Registration<'_> {
    /// Records when this waiter's timer fires (store-clock ms), so that a notification of an
    /// earlier scheduled job wakes it.
    pub(crate) fn arm(&self, at_ms: i64) {
        self.timer_at.store(at_ms, Ordering::Release);
    }

    /// Whether a notification woke it.
    pub(crate) fn was_woken(&self) -> bool {
        self.woken.load(Ordering::Acquire)
    }
}

impl Waiters {
    /// Registers a lease waiting for up to `max_jobs` jobs of `queue`. Register before looking
    /// for jobs, so that a notification in between still wakes it.
    pub(crate) fn register(&self, queue: &str, max_jobs: u32) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let timer_at = Arc::new(AtomicI64::new(i64::MAX));
        let woken = Arc::new(AtomicBool::new(false));
        let waiter = Waiter { id, max_jobs, notify: notify.clone(), timer_at: timer_at.clone(), woken: woken.clone() };
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(queue.to_owned()).or_default().push_back(waiter);
        Registration { waiters: self, queue: queue.to_owned(), id, notify, timer_at, woken }
    }

    /// Wakes waiters of `queue`, oldest first, until their asks cover `jobs` ready jobs.
    pub(crate) fn wake(&self, queue: &str, jobs: u64) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(waiting) = queues.get_mut(queue) else { return };
        let mut uncovered = jobs;
        while uncovered > 0 {
            let Some(waiter) = waiting.pop_front() else { break };
            uncovered = uncovered.saturating_sub(u64::from(waiter.max_jobs));
            waiter.woken.store(true, Ordering::Release);
            waiter.notify.notify_one();
        }
        if waiting.is_empty() {
            queues.remove(queue);
        }
    }

    /// Wakes the waiters of `queue` whose timer fires after `due_ms`, so they re-arm it.
    pub(crate) fn wake_timers(&self, queue: &str, due_ms: i64) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(waiting) = queues.get(queue) else { return };
        for waiter in waiting.iter().filter(|w| w.timer_at.load(Ordering::Acquire) > due_ms) {
            waiter.notify.notify_one();
        }
    }

    /// Wakes every waiter of every queue, to look again.
    pub(crate) fn wake_all(&self) {
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        for waiter in queues.values().flatten() {
            waiter.notify.notify_one();
        }
    }

    /// What a lease of `queue_id` must do before it sleeps until `wake_at`, at `now`.
    pub(crate) fn sleep_step(&self, queue_id: i64, now: Instant, wake_at: Instant) -> SleepStep {
        let margin = Duration::from_millis(REGISTRATION_MARGIN_MS);
        let registrations = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        let generation = registrations.generation;
        match registrations.by_queue.get(&queue_id) {
            Some(r) if r.until >= wake_at + margin => {
                if r.armed {
                    SleepStep::Sleep
                } else {
                    SleepStep::Check(Ticket { until: r.until, generation })
                }
            }
            r => SleepStep::Register(Renewal {
                ticket: Ticket {
                    until: now + Duration::from_millis(REGISTRATION_MS - REGISTRATION_SLACK_MS),
                    generation,
                },
                armed_until: r.filter(|r| r.armed && r.until > now).map(|r| r.until),
            }),
        }
    }

    /// Records the registration `renewal` wrote, the write having returned at `done_at`; says
    /// what is left to do: nothing if it renewed an armed registration without a gap, else
    /// the check.
    pub(crate) fn registered(&self, queue_id: i64, renewal: Renewal, done_at: Instant) -> SleepStep {
        let mut registrations = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        let ticket = renewal.ticket;
        if registrations.generation != ticket.generation {
            // Forgotten meanwhile: record nothing; the check's news will be ignored too.
            return SleepStep::Check(ticket);
        }
        let armed = renewal.armed_until.is_some_and(|until| done_at < until);
        if registrations.by_queue.len() >= REGISTRATIONS_KEPT {
            registrations.by_queue.retain(|_, r| r.until > done_at);
        }
        registrations.by_queue.insert(queue_id, Registered { until: ticket.until, armed });
        if armed {
            SleepStep::Sleep
        } else {
            SleepStep::Check(ticket)
        }
    }

    /// Records that `may_sleep` succeeded for `queue_id` while the registration `ticket` names
    /// was valid; news of a registration since replaced or forgotten is ignored.
    pub(crate) fn armed(&self, queue_id: i64, ticket: Ticket) {
        let mut registrations = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        if registrations.generation != ticket.generation {
            return;
        }
        if let Some(r) = registrations.by_queue.get_mut(&queue_id).filter(|r| r.until == ticket.until) {
            r.armed = true;
        }
    }

    /// Forgets every registration: the database may have lost them (the listener reconnected,
    /// perhaps to a restarted server, whose unlogged `sleepers` starts empty).
    pub(crate) fn forget_registrations(&self) {
        let mut registrations = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        registrations.by_queue.clear();
        registrations.generation += 1;
    }

    /// Acts on one notification payload (see the module docs); ignores what it cannot read.
    pub(crate) fn dispatch(&self, payload: &str) {
        let mut parts = payload.splitn(3, ' ');
        let (Some(kind), Some(number), Some(queue)) = (parts.next(), parts.next(), parts.next()) else {
            tracing::debug!(payload, "ignoring a notification that is not onceq's");
            return;
        };
        match (kind, number.parse::<i64>()) {
            ("r", Ok(count)) => self.wake(queue, u64::try_from(count).unwrap_or(0)),
            ("s", Ok(due_ms)) => self.wake_timers(queue, due_ms),
            _ => tracing::debug!(payload, "ignoring a notification that is not onceq's"),
        }
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut queues = self.waiters.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiting) = queues.get_mut(&self.queue) {
            waiting.retain(|w| w.id != self.id);
            if waiting.is_empty() {
                queues.remove(&self.queue);
            }
        }
    }
}

/// Starts listening on `channel`: returns once the `LISTEN` is in place, so that no
/// notification committed after `connect` returns is missed.
pub(crate) async fn start_listening(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel).await?;
    Ok(listener)
}

/// The listener task: receives notifications and wakes waiters until the store is dropped (its
/// owner aborts this task) or the pool is closed. Reconnects with backoff when the connection
/// is lost, then wakes every waiter, since notifications sent meanwhile are gone.
pub(crate) async fn listen(pool: PgPool, channel: String, mut listener: PgListener, waiters: Weak<Waiters>) {
    let mut retry_ms = LISTENER_RETRY_MS.0;
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => {
                let Some(waiters) = waiters.upgrade() else { return };
                waiters.dispatch(notification.payload());
                retry_ms = LISTENER_RETRY_MS.0;
            }
            Ok(None) => {
                // The connection dropped; the next `try_recv` reconnects and listens again.
                tracing::warn!(channel, "the PostgreSQL listener lost its connection; reconnecting");
                let Some(waiters) = waiters.upgrade() else { return };
                waiters.forget_registrations();
                waiters.wake_all();
            }
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error, channel, retry_ms, "the PostgreSQL listener failed; reconnecting");
                loop {
                    tokio::time::sleep(Duration::from_millis(retry_ms)).await;
                    retry_ms = (retry_ms * 2).min(LISTENER_RETRY_MS.1);
                    if pool.is_closed() || waiters.strong_count() == 0 {
                        return;
                    }
                    match start_listening(&pool, &channel).await {
                        Ok(fresh) => {
                            listener = fresh;
                            break;
                        }
                        Err(error) => tracing::warn!(%error, channel, retry_ms, "reconnecting the listener failed"),
                    }
                }
                let Some(waiters) = waiters.upgrade() else { return };
                waiters.forget_registrations();
                waiters.wake_all();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The steps a lease takes before sleeping, with the registration's news arriving on time,
    /// late, or after the registrations were forgotten.
    #[test]
    fn a_registration_is_written_checked_renewed_without_a_gap_and_redone_after_one() {
        let waiters = Waiters::default();
        let ms = Duration::from_millis;
        let local = ms(REGISTRATION_MS - REGISTRATION_SLACK_MS);
        let t0 = Instant::now();
        let SleepStep::Register(first) = waiters.sleep_step(7, t0, t0 + ms(5_000)) else { panic!("must register") };
        assert_eq!(first.armed_until, None);
        let SleepStep::Check(ticket) = waiters.registered(7, first, t0 + ms(2)) else { panic!("must check") };
        assert_eq!(waiters.sleep_step(7, t0, t0 + ms(5_000)), SleepStep::Check(ticket), "registered, not checked");
        waiters.armed(7, ticket);
        assert_eq!(waiters.sleep_step(7, t0, t0 + ms(5_000)), SleepStep::Sleep);
        assert!(matches!(waiters.sleep_step(8, t0, t0 + ms(5_000)), SleepStep::Register(_)), "per queue");

        // A sleep the registration does not cover renews it: written in time, it stays armed.
        let t1 = t0 + local - ms(3_000);
        let SleepStep::Register(renewal) = waiters.sleep_step(7, t1, t1 + ms(5_000)) else { panic!("must renew") };
        assert_eq!(renewal.armed_until, Some(t0 + local));
        assert_eq!(waiters.registered(7, renewal, t1 + ms(50)), SleepStep::Sleep);
        // Written after the old one ended (a slow pool, a retry), it must be checked again.
        let t2 = t1 + local - ms(3_000);
        let SleepStep::Register(late) = waiters.sleep_step(7, t2, t2 + ms(5_000)) else { panic!("must renew") };
        assert!(matches!(waiters.registered(7, late, t1 + local + ms(1)), SleepStep::Check(_)));
        // A check's news about a registration since replaced is ignored.
        waiters.armed(7, ticket);
        assert!(matches!(waiters.sleep_step(7, t2, t2 + ms(100)), SleepStep::Check(_)));

        // Forgotten (the listener reconnected): news of writes and checks in flight is ignored.
        let SleepStep::Check(pending) = waiters.sleep_step(7, t2, t2 + ms(100)) else { panic!("must check") };
        let SleepStep::Register(in_flight) = waiters.sleep_step(9, t2, t2 + ms(100)) else { panic!("must register") };
        waiters.forget_registrations();
        waiters.armed(7, pending);
        assert!(matches!(waiters.registered(9, in_flight, t2 + ms(5)), SleepStep::Check(_)));
        assert!(matches!(waiters.sleep_step(7, t2, t2 + ms(100)), SleepStep::Register(r) if r.armed_until.is_none()));
        assert!(matches!(waiters.sleep_step(9, t2, t2 + ms(100)), SleepStep::Register(_)));
    }

    #[tokio::test]
    async fn wakes_just_enough_waiters_and_timers_that_fire_later() {
        let waiters = Waiters::default();
        let batch = waiters.register("q", 100);
        let single = waiters.register("q", 1);
        let late = waiters.register("q", 1);
        waiters.dispatch("r 101 q");
        batch.notify.notified().await;
        single.notify.notified().await;
        assert!(batch.was_woken() && single.was_woken() && !late.was_woken());
        late.arm(5_000);
        waiters.dispatch("s 6000 q");
        let not_yet = tokio::time::timeout(Duration::from_millis(50), late.notify.notified());
        assert!(not_yet.await.is_err(), "a timer firing before the new job must not be woken");
        waiters.dispatch("s 4000 q");
        late.notify.notified().await;
        assert!(!late.was_woken(), "a timer re-arm is not a wake-up by a job");
        waiters.dispatch("garbage");
        waiters.dispatch("r x q");
        drop(late);
        assert!(waiters.queues.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
    }
}
