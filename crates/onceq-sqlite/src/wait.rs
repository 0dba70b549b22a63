//! Long-poll waiting: leases that wait for jobs, and waking just enough of them.
//!
//! Each waiting lease registers itself with the number of jobs it asks for. When a commit makes
//! `k` jobs ready in a queue, the writer wakes waiters in arrival order until their asks cover `k`:
//! one batch worker for a batch, sixty-four single-job workers for sixty-four jobs. Waking every
//! waiter on every enqueue would send them all to the writer for work only the first can take.
//! A woken lease that leaves ready jobs behind reports them, which wakes the next waiters.
//!
//! Group leases wait apart ([`GroupWaiters`]): only the member that owns a job's partition may
//! lease it, which the writer knows and the waking commit does not, so every waiting group lease
//! of the queue looks again. They are woken too when a lease of the queue ends or its group
//! changes, since either may hand a partition to a waiting member.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use onceq_core::QueueName;
use tokio::sync::Notify;

/// One waiting lease.
struct Waiter {
    /// Identifies the registration, so that it can remove itself.
    id: u64,
    /// How many jobs it asks for.
    max_jobs: u32,
    /// Woken with `notify_one`, which keeps the wake-up if it is not yet waiting.
    notify: Arc<Notify>,
}

/// The waiting leases of every queue.
#[derive(Default)]
pub(crate) struct Waiters {
    queues: Mutex<HashMap<QueueName, VecDeque<Waiter>>>,
    next_id: AtomicU64,
}

/// A registration; dropping it withdraws the waiter if it was not woken.
pub(crate) struct Registration<'a> {
    waiters: &'a Waiters,
    queue: QueueName,
    id: u64,
    /// Completes when the writer wakes this waiter.
    pub notify: Arc<Notify>,
}

impl Waiters {
    /// Registers a lease waiting for up to `max_jobs` jobs of `queue`. Register before looking for
    /// jobs, so that a commit in between still wakes it.
    pub(crate) fn register(&self, queue: &QueueName, max_jobs: u32) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(queue.clone()).or_default().push_back(Waiter { id, max_jobs, notify: notify.clone() });
        Registration { waiters: self, queue: queue.clone(), id, notify }
    }

    /// Wakes waiters of `queue`, oldest first, until their asks cover `jobs` ready jobs.
    pub(crate) fn wake(&self, queue: &QueueName, jobs: u64) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(waiting) = queues.get_mut(queue) else { return };
        let mut uncovered = jobs;
        while uncovered > 0 {
            let Some(waiter) = waiting.pop_front() else { break };
            uncovered = uncovered.saturating_sub(u64::from(waiter.max_jobs));
            waiter.notify.notify_one();
        }
        if waiting.is_empty() {
            queues.remove(queue);
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

/// One waiting group lease.
struct GroupWaiter {
    /// Identifies the registration, so that it can remove itself.
    id: u64,
    /// Woken with `notify_one`, which keeps the wake-up if it is not yet waiting.
    notify: Arc<Notify>,
}

/// The waiting group leases of every queue.
#[derive(Default)]
pub(crate) struct GroupWaiters {
    queues: Mutex<HashMap<QueueName, Vec<GroupWaiter>>>,
    next_id: AtomicU64,
    /// How many are registered, so the writer skips the bookkeeping when none waits.
    registered: AtomicUsize,
}

/// A group lease's registration; dropping it withdraws it if it was not woken.
pub(crate) struct GroupRegistration<'a> {
    waiters: &'a GroupWaiters,
    queue: QueueName,
    id: u64,
    /// Completes when the writer wakes this waiter.
    pub notify: Arc<Notify>,
}

impl GroupWaiters {
    /// Registers a group lease waiting on `queue`. Register before looking, so that a commit in
    /// between still wakes it.
    pub(crate) fn register(&self, queue: &QueueName) -> GroupRegistration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.entry(queue.clone()).or_default().push(GroupWaiter { id, notify: notify.clone() });
        self.registered.fetch_add(1, Ordering::SeqCst);
        GroupRegistration { waiters: self, queue: queue.clone(), id, notify }
    }

    /// Whether any group lease waits. A lease registers before its request reaches the writer,
    /// so a commit that this misses comes before that request, which then sees what it did.
    pub(crate) fn waiting(&self) -> bool {
        self.registered.load(Ordering::SeqCst) > 0
    }

    /// Wakes every group lease waiting on `queue`.
    pub(crate) fn wake_all(&self, queue: &QueueName) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiting) = queues.remove(queue) {
            self.registered.fetch_sub(waiting.len(), Ordering::SeqCst);
            for waiter in waiting {
                waiter.notify.notify_one();
            }
        }
    }
}

impl Drop for GroupRegistration<'_> {
    fn drop(&mut self) {
        let mut queues = self.waiters.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(waiting) = queues.get_mut(&self.queue) {
            let before = waiting.len();
            waiting.retain(|w| w.id != self.id);
            self.waiters.registered.fetch_sub(before - waiting.len(), Ordering::SeqCst);
            if waiting.is_empty() {
                queues.remove(&self.queue);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_just_enough_waiters_oldest_first() {
        let waiters = Waiters::default();
        let q = QueueName::new("q").unwrap_or_else(|e| panic!("{e}"));
        let batch = waiters.register(&q, 100);
        let single_a = waiters.register(&q, 1);
        let single_b = waiters.register(&q, 1);
        waiters.wake(&q, 101);
        // The batch waiter and one single-job waiter cover 101 jobs; the last one sleeps on.
        batch.notify.notified().await;
        single_a.notify.notified().await;
        let still_waiting = tokio::time::timeout(std::time::Duration::from_millis(50), single_b.notify.notified());
        assert!(still_waiting.await.is_err(), "a waiter beyond the ready jobs must not be woken");
        drop(single_b);
        assert!(waiters.queues.lock().unwrap_or_else(|p| p.into_inner()).is_empty());
    }
}
