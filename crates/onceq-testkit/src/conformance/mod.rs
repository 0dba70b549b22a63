//! Conformance functions: one per behaviour of `docs/semantics.md` and one per invariant of
//! docs/design.md that can be checked at the seam. Every backend runs all of them, unchanged, through
//! [`conformance_suite!`](crate::conformance_suite).
//!
//! Each function opens its own store with [`Backend::open`] and depends on no other. Most run on a
//! [`ManualClock`], so every time they assert is exact; the long-poll ones run on a [`SystemClock`]
//! with short real delays, because what they test is waking up in real time.
//!
//! Where `docs/semantics.md` leaves a value open (the `run_at` of a dead job, the wording of an
//! `InvalidRequest` the store phrases itself), the function says so and asserts what is pinned
//! down. Errors that come from the shared validation in `onceq_core` are compared whole.
//!
//! Invariant 1 (durability across `kill -9`) needs a real process to kill; the crash test checks it.
//!
//! # Layout
//!
//! - this module: the fixture and expectations every area shares, the suite's list of functions
//!   ([`conformance_suite!`](crate::conformance_suite)) and [`SUITE`], the same list as data;
//! - [`enqueue`], [`lease`] (with lease expiry), [`settle`] (ack, nack, release, extend, fail),
//!   [`cancel`], [`control`] (an operator's delete and kill), [`dead_letters`], [`queues`], [`limits`] (Invariant 8), [`long_poll`], [`ordering`] (Invariant 9),
//!   [`groups`] (Invariants 10 and 11), [`commits`] (Invariants 12 and 13), [`schedules`]
//!   (Invariant 14), [`flow`] (rate, in-flight and depth limits, Invariant 15), [`unique`] (unique
//!   jobs: each `while` by each `by`, freeing keys, the canonical payload), [`invariants`]
//!   (Invariants 2 to 7): the conformance functions of one area each.
//!
//! A `pub async fn` in an area file is a conformance function; the testkit's
//! `conformance_complete` test fails when one is missing from the suite's list.

// These functions are tests: a panic is how they report a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod cancel;
pub mod commits;
pub mod control;
pub mod dead_letters;
pub mod enqueue;
pub mod flow;
pub mod groups;
pub mod invariants;
pub mod lease;
pub mod limits;
pub mod long_poll;
pub mod ordering;
pub mod queues;
pub mod schedules;
pub mod settle;
pub mod unique;

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use onceq_core::limits::LEASE_BATCH_MAX;
use onceq_core::{
    AttemptError, Clock, Error, Job, JobId, JobState, LeaseOptions, LeaseRef, LeaseToken, LeasedJob, ManualClock,
    NewJob, QueueConfig, QueueConfigPatch, QueueInfo, QueueName, QueueStats, Result, Store, StoreExt, SystemClock,
    Timestamp,
};
use tokio::sync::Barrier;
use tokio::task::{JoinHandle, JoinSet};

use crate::Backend;

// ---------------------------------------------------------------------------------------------
// Fixture and expectations shared by the conformance functions.
// ---------------------------------------------------------------------------------------------

/// A job id no conformance function ever reaches.
const UNKNOWN_ID: JobId = JobId::new(1 << 40);

/// How long a long-poll test lets its lease wait.
const LONG_WAIT_MS: u64 = 10_000;
/// A woken long poll must return well before its wait ends: within this.
const PROMPTLY: Duration = Duration::from_secs(3);
/// Real time a long-poll test lets pass before it acts, so the lease is already waiting.
const NUDGE: Duration = Duration::from_millis(250);
/// Short real delay (scheduled job, nack delay, visibility timeout) in long-poll tests. The
/// waiting lease starts after the call that set the delay returned, and must still wait 200 ms
/// (see `check_woke`): the rest is slack for that call's commit, which on a busy machine's disk
/// took over 100 ms (a 300 ms delay failed there).
const SHORT_MS: u64 = 1_000;
/// Bound on any call a test awaits that could hang on a broken store.
const HANG: Duration = Duration::from_secs(20);

/// One store opened for one conformance function, with its clock.
struct Fixture<S> {
    /// The store under test, shareable with spawned tasks.
    store: Arc<S>,
    /// The store's one clock.
    clock: Arc<dyn Clock>,
    /// Keeps the backend's resources (a temporary directory, a schema) alive; dropped after `store`.
    _guard: Box<dyn Any + Send + Sync>,
}

/// Opens a fresh store on a [`ManualClock`] standing at its default start.
async fn open_manual<B: Backend>(backend: &B) -> (Fixture<B::Store>, Arc<ManualClock>) {
    let manual = ManualClock::at_default_start();
    let clock: Arc<dyn Clock> = manual.clone();
    let opened = backend.open(clock.clone()).await;
    (Fixture { store: Arc::new(opened.store), clock, _guard: opened.guard }, manual)
}

/// Opens a fresh store on a real [`SystemClock`].
async fn open_system<B: Backend>(backend: &B) -> Fixture<B::Store> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let opened = backend.open(clock.clone()).await;
    Fixture { store: Arc::new(opened.store), clock, _guard: opened.guard }
}

impl<S: Store + 'static> Fixture<S> {
    /// The store's current time.
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Enqueues jobs that must all be new; returns their ids.
    async fn enqueue(&self, queue: &QueueName, jobs: Vec<NewJob>) -> Vec<JobId> {
        let enqueued = self.store.job_enqueue(queue, jobs).await.unwrap();
        assert!(enqueued.iter().all(|e| !e.duplicate), "expected only new jobs, got {enqueued:?}");
        enqueued.into_iter().map(|e| e.id).collect()
    }

    /// Enqueues one job that must be new; returns its id.
    async fn enqueue_one(&self, queue: &QueueName, job: NewJob) -> JobId {
        let ids = self.enqueue(queue, vec![job]).await;
        assert_eq!(ids.len(), 1, "one job enqueued, ids {ids:?} returned");
        ids[0]
    }

    /// Leases without waiting.
    async fn lease(&self, queue: &QueueName, max_jobs: u32, visibility_timeout_ms: Option<u64>) -> Vec<LeasedJob> {
        self.store.job_lease(queue, LeaseOptions { max_jobs, visibility_timeout_ms, wait_ms: 0 }).await.unwrap()
    }

    /// Leases exactly one job, without waiting.
    async fn lease_one(&self, queue: &QueueName, visibility_timeout_ms: Option<u64>) -> LeasedJob {
        let mut jobs = self.lease(queue, 1, visibility_timeout_ms).await;
        assert_eq!(jobs.len(), 1, "expected one job to lease, got {jobs:?}");
        jobs.remove(0)
    }

    /// Asserts that the queue hands out nothing now.
    async fn lease_none(&self, queue: &QueueName) {
        assert_eq!(self.lease(queue, LEASE_BATCH_MAX, None).await, Vec::<LeasedJob>::new(), "nothing may be leased");
    }

    /// Reads a job that must exist.
    async fn get(&self, id: JobId) -> Job {
        self.store.job_get(id).await.unwrap()
    }

    /// Reads a queue's stats.
    async fn stats(&self, queue: &QueueName) -> QueueStats {
        self.store.queue_get(queue).await.unwrap().stats
    }

    /// Creates or updates a queue.
    async fn upsert(&self, queue: &QueueName, patch: QueueConfigPatch) -> QueueConfig {
        self.store.queue_upsert(queue, patch).await.unwrap()
    }

    /// Enqueues `count` jobs into a queue where nothing else is ready, leases and fails each;
    /// returns their ids.
    async fn enqueue_dead(&self, queue: &QueueName, count: usize) -> Vec<JobId> {
        let ids = self.enqueue(queue, (0..count).map(|i| NewJob::new(format!("doomed {i}"))).collect()).await;
        let leased = self.lease(queue, u32::try_from(count).unwrap(), None).await;
        assert_eq!(ids_of(&leased), ids, "enqueue_dead needs a queue with nothing else ready");
        for job in &leased {
            assert_eq!(self.store.fail(job.lease(), "doomed").await, Ok(()));
        }
        ids
    }

    /// Everything a failed call must not change: the queue list (with stats) and these jobs.
    async fn snapshot(&self, ids: &[JobId]) -> (Vec<QueueInfo>, Vec<Result<Job>>) {
        let mut jobs = Vec::new();
        for id in ids {
            jobs.push(self.store.job_get(*id).await);
        }
        (self.store.queue_list().await.unwrap(), jobs)
    }

    /// Asserts that ack, nack, extend and fail presenting `lease` are each rejected with
    /// `expected`, and that the job reads the same before and after (Invariant 3).
    async fn assert_settles_rejected(&self, lease: LeaseRef, expected: Error) {
        let before = self.store.job_get(lease.id).await;
        assert_eq!(self.store.ack(lease).await, Err(expected.clone()), "ack");
        assert_eq!(self.store.nack(lease, Some(0), Some("late")).await, Err(expected.clone()), "nack");
        assert_eq!(self.store.extend(lease, 60_000).await, Err(expected.clone()), "extend");
        assert_eq!(self.store.fail(lease, "late").await, Err(expected), "fail");
        assert_eq!(self.store.job_get(lease.id).await, before, "a rejected settle changed the job");
    }
}

/// A validated queue name.
fn queue(name: &str) -> QueueName {
    QueueName::new(name).unwrap()
}

/// Stats with these counts.
fn counts(ready: u64, scheduled: u64, leased: u64, dead: u64, oldest_ready_age_ms: Option<u64>) -> QueueStats {
    QueueStats { ready, scheduled, leased, dead, blocked: 0, cancelled: 0, oldest_ready_age_ms }
}

/// The config of a queue nobody configured.
fn defaults() -> QueueConfig {
    QueueConfig::default()
}

/// A job as it must read right after its enqueue at `enqueued_at`.
fn fresh(
    id: JobId,
    queue: &QueueName,
    job: &NewJob,
    enqueued_at: Timestamp,
    run_at: Timestamp,
    max_attempts: u32,
) -> Job {
    Job {
        id,
        queue: queue.clone(),
        state: if run_at > enqueued_at { JobState::Scheduled } else { JobState::Ready },
        attempt: 0,
        max_attempts,
        priority: job.priority,
        payload: job.payload.clone(),
        headers: job.headers.clone(),
        dedup_id: job.dedup_id.clone(),
        ordering_key: job.ordering_key.clone(),
        partition: None,
        enqueued_at,
        run_at,
        lease_expires_at: None,
        cancelled_at: None,
        errors: Vec::new(),
    }
}

/// What a lease of `job` (as it read just before) must hand out.
fn leased_from(job: &Job, lease_token: LeaseToken, attempt: u32, lease_expires_at: Timestamp) -> LeasedJob {
    LeasedJob {
        id: job.id,
        queue: job.queue.clone(),
        lease_token,
        attempt,
        max_attempts: job.max_attempts,
        priority: job.priority,
        payload: job.payload.clone(),
        headers: job.headers.clone(),
        dedup_id: job.dedup_id.clone(),
        ordering_key: job.ordering_key.clone(),
        partition: job.partition,
        enqueued_at: job.enqueued_at,
        run_at: job.run_at,
        lease_expires_at,
    }
}

/// `job` under a live lease.
fn leased_state(job: &Job, attempt: u32, lease_expires_at: Timestamp) -> Job {
    Job { state: JobState::Leased, attempt, lease_expires_at: Some(lease_expires_at), ..job.clone() }
}

/// `expected` with the `run_at` of `actual`: docs/semantics.md does not pin a dead job's `run_at`.
fn with_run_at_of(expected: Job, actual: &Job) -> Job {
    Job { run_at: actual.run_at, ..expected }
}

/// One attempt's error.
fn attempt_error(attempt: u32, error: &str, at: Timestamp) -> AttemptError {
    AttemptError { attempt, error: error.to_owned(), at }
}

/// The ids of leased jobs, in order.
fn ids_of(jobs: &[LeasedJob]) -> Vec<JobId> {
    jobs.iter().map(|j| j.id).collect()
}

/// Asserts that ids are strictly increasing.
fn assert_increasing(ids: &[JobId]) {
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids are not strictly increasing: {ids:?}");
}

/// Awaits `future`, failing the test instead of hanging when the store never answers.
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not return within {HANG:?}"),
    }
}

/// Starts, on its own task, a one-job lease that waits up to [`LONG_WAIT_MS`]; it yields the jobs
/// and how long the call took.
fn spawn_waiting_lease<S: Store + 'static>(
    store: &Arc<S>,
    queue: &QueueName,
) -> JoinHandle<(Vec<LeasedJob>, Duration)> {
    let store = Arc::clone(store);
    let queue = queue.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let options = LeaseOptions { max_jobs: 1, visibility_timeout_ms: None, wait_ms: LONG_WAIT_MS };
        let jobs = store.job_lease(&queue, options).await.unwrap();
        (jobs, started.elapsed())
    })
}

/// Asserts that a waiting lease returned job `id` at `attempt`, after it had waited (it began
/// before the job was ready) and well before its wait ended.
async fn assert_woke(waiting: JoinHandle<(Vec<LeasedJob>, Duration)>, id: JobId, attempt: u32) {
    check_woke(within("the waiting lease", waiting).await.unwrap(), id, attempt);
}

/// [`assert_woke`] on the output of a waiting lease already joined.
fn check_woke((jobs, elapsed): (Vec<LeasedJob>, Duration), id: JobId, attempt: u32) {
    let got: Vec<(JobId, u32)> = jobs.iter().map(|j| (j.id, j.attempt)).collect();
    assert_eq!(got, vec![(id, attempt)], "the waiting lease must return the job that became ready");
    assert!(elapsed >= Duration::from_millis(200), "the lease returned after {elapsed:?}, before the job was ready");
    assert!(elapsed < PROMPTLY, "the lease took {elapsed:?} to wake up (wait was {LONG_WAIT_MS} ms)");
}

/// Runs `tasks` concurrent one-shot leases; returns every job they got.
async fn lease_concurrently<S: Store + 'static>(
    store: &Arc<S>,
    queue: &QueueName,
    tasks: usize,
    options: LeaseOptions,
) -> Vec<LeasedJob> {
    let barrier = Arc::new(Barrier::new(tasks));
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let (store, queue, barrier) = (Arc::clone(store), queue.clone(), Arc::clone(&barrier));
        set.spawn(async move {
            barrier.wait().await;
            store.job_lease(&queue, options).await.unwrap()
        });
    }
    let mut all = Vec::new();
    while let Some(jobs) = within("concurrent leases", set.join_next()).await {
        all.extend(jobs.unwrap());
    }
    all
}

/// The conformance functions every backend runs, by area, as `(area, function)`: what
/// [`conformance_suite!`](crate::conformance_suite) expands to, as data, so that a test can check
/// that no function of an area is left out.
pub const SUITE: &[(&str, &str)] = crate::conformance_suite!(@list @names;);

/// Expands to one `#[tokio::test]` per conformance function, each running it against `$backend`
/// (an expression whose type implements [`Backend`](crate::Backend), evaluated in each test).
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features:
///
/// ```ignore
/// onceq_testkit::conformance_suite!(my_backend::TestBackend);
/// ```
///
/// The list of functions is written once, in the `@list` arm; a function left out of it runs on no
/// backend, which the testkit's `conformance_complete` test catches.
#[macro_export]
macro_rules! conformance_suite {
    (@tests $backend:expr; $($area:ident: [$($name:ident),* $(,)?]),* $(,)?) => {
        $($(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                $crate::conformance::$area::$name(&$backend).await;
            }
        )*)*
    };
    (@names; $($area:ident: [$($name:ident),* $(,)?]),* $(,)?) => {
        &[$($((stringify!($area), stringify!($name))),*),*]
    };
    // Hands the list to the arm named by the caller (`@tests $backend;` or `@names;`).
    (@list $($arm:tt)*) => {
        $crate::conformance_suite! { $($arm)*
            enqueue: [
                enqueue_returns_ids_in_request_order,
                enqueue_batch_is_atomic,
                enqueue_creates_unknown_queue_with_defaults,
                enqueue_max_attempts_from_job_else_queue,
                enqueue_effectively_once_requires_dedup_ids,
                enqueue_delayed_job_becomes_ready_when_due,
                enqueue_run_at_schedules_at_that_time,
                enqueue_dedup_returns_original_even_after_ack_or_dead,
                enqueue_dedup_window_expires,
            ],
            unique: [
                unique_while_pending_by_each_key,
                unique_while_active_by_each_key,
                unique_while_window_by_each_key,
                unique_by_payload_hashes_the_canonical_form,
                unique_keys_are_freed_when_their_job_leaves,
                unique_requests_are_validated,
                unique_by_dedup_id_replaces_the_dedup_window,
                unique_jobs_in_commits_and_ordered_queues,
                unique_holds_under_concurrent_enqueues,
            ],
            lease: [
                lease_order_priority_then_run_at_then_id,
                lease_batch_up_to_max_jobs,
                lease_sets_attempt_token_and_expiry,
                lease_unknown_queue_is_empty_and_not_created,
                lease_paused_queue_hands_out_nothing,
                lease_at_most_once_removes_job,
                lease_expiry_redelivers_with_next_attempt,
                lease_expiry_on_last_attempt_dead_letters,
                error_history_keeps_every_attempt,
            ],
            settle: [
                ack_removes_job,
                ack_batch_judges_each_item_alone,
                nack_extend_fail_batches_judge_each_item_alone,
                nack_with_explicit_delay,
                nack_with_backoff,
                nack_zero_delay_is_ready_at_once,
                release_returns_the_job_without_burning_an_attempt,
                release_with_a_delay_schedules_the_job,
                release_batch_judges_each_item_alone,
                nack_on_last_attempt_dead_letters,
                extend_moves_expiry_and_keeps_token,
                fail_dead_letters_with_error,
                settle_long_error_text_is_cut,
            ],
            cancel: [
                cancel_a_job_that_is_not_leased_ends_it_at_once,
                cancel_a_leased_job_marks_it_and_the_end_of_its_lease_cancels_it,
                cancel_in_a_per_key_queue_lets_the_key_go_on,
            ],
            control: [
                delete_removes_a_job_that_is_not_leased,
                kill_makes_a_job_dead_now,
                delete_and_kill_in_a_per_key_queue_hand_the_key_on,
            ],
            dead_letters: [
                dead_list_pages,
                dead_redrive_all,
                dead_redrive_by_ids_skips_others,
                dead_redrive_with_limit,
                dead_redrive_filters,
                dead_redrive_into_another_queue,
                dead_redrive_paced,
                dead_purge_deletes_dead_jobs,
            ],
            queues: [
                queue_upsert_creates_with_defaults_and_patch,
                queue_upsert_updates_existing,
                queue_upsert_merges_a_partial_backoff,
                queue_upsert_rejects_invalid_config,
                queue_stats_count_each_state,
                queue_stats_oldest_ready_spans_priorities,
                queue_list_lists_by_name,
                queue_list_pages_by_name,
                queue_ops_on_unknown_queue_are_not_found,
                queue_delete_removes_queue_and_jobs,
                queue_durability_round_trips_and_relaxed_queues_work,
            ],
            limits: [
                limits_accept_their_maximum,
                a_lease_of_big_jobs_stops_at_its_reply_bytes,
                invariant_8_bounded_everything,
            ],
            long_poll: [
                long_poll_wakes_on_enqueue,
                long_poll_wakes_every_waiter_a_batch_can_serve,
                long_poll_on_unknown_queue_wakes_on_enqueue,
                long_poll_wakes_when_scheduled_job_is_due,
                long_poll_wakes_when_nack_delay_elapses,
                long_poll_wakes_when_lease_expires,
                long_poll_wakes_on_redrive,
                long_poll_wakes_on_resume,
                long_poll_with_nothing_returns_empty_after_wait,
                long_poll_wakes_on_manual_clock_advance,
            ],
            ordering: [
                ordered_keys_lease_one_at_a_time_in_enqueue_order,
                a_later_job_of_a_key_never_overtakes_an_earlier_one,
                a_promoted_job_keeps_its_own_delay,
                a_nacked_released_or_expired_head_keeps_its_key_blocked,
                a_dead_head_lets_its_key_go_on,
                dead_blocks_key_holds_the_key_until_redrive_or_purge,
                a_redriven_job_rejoins_its_key_in_id_order,
                ordering_keys_order_nothing_in_an_unordered_queue,
                partitions_follow_the_documented_hash,
                ordering_and_partitions_change_only_while_the_queue_is_empty,
                duplicates_deleted_queues_and_key_limits,
                invariant_9_per_key_order_under_concurrent_workers,
                long_poll_wakes_when_a_key_moves_on,
            ],
            groups: [
                a_first_member_owns_every_partition,
                a_member_leases_only_from_its_partitions,
                a_group_lease_takes_from_every_partition_before_a_second_from_any,
                a_partition_moves_only_once_its_leases_are_settled,
                an_expired_member_is_removed_and_fenced,
                leaving_rebalances_and_unknown_members_are_refused,
                groups_refuse_what_they_cannot_serve,
                invariant_11_membership_changes_move_the_fewest_partitions,
                deleting_a_queue_deletes_its_groups,
            ],
            commits: [
                a_commit_acks_its_input_and_enqueues_its_outputs_together,
                a_commit_with_a_stale_lease_or_a_refused_enqueue_changes_nothing,
                a_commit_id_replays_its_first_outcome_and_refuses_other_content,
                a_newer_registration_fences_the_older_producer_and_returns_its_checkpoint,
                a_commit_moves_a_key_on_and_enqueues_its_next_job,
                racing_producer_instances_hand_over_at_the_checkpoint_without_gaps_or_repeats,
            ],
            // Flow limits (Invariant 15): rate, in flight, depth.
            flow: [
                flow_limits_are_validated_and_cleared,
                a_rate_limited_lease_returns_what_the_bucket_allows,
                invariant_15_rate_holds_over_every_window,
                invariant_15_in_flight_holds_with_expiry_and_redelivery,
                a_held_back_long_poll_waits_for_the_limit,
                max_depth_refuses_a_batch_whole_and_accepts_again_after_acks,
                group_leases_pass_the_same_limits,
                per_key_limits_are_validated_and_cleared,
                per_key_buckets_are_independent,
                max_in_flight_per_key_holds_with_expiry,
                invariant_15_rate_holds_per_key_over_every_window,
                a_long_poll_held_by_a_key_waits_for_its_token,
                a_per_key_lease_scans_a_bounded_number_of_candidates,
                group_leases_pass_per_key_limits,
            ],
            schedules: [
                a_schedule_fires_one_job_per_tick,
                a_paused_schedule_fires_nothing,
                a_deleted_schedule_fires_nothing_and_is_not_found,
                a_bad_cron_or_timezone_is_refused_naming_the_field,
                a_clock_that_jumps_back_refires_nothing,
                a_three_hour_downtime_catches_up_as_each_policy_says,
                daylight_saving_changes_skip_missing_times_and_fire_repeated_ones_once,
                changing_the_cron_keeps_no_phantom_ticks,
            ],
            invariants: [
                invariant_2_one_live_lease,
                invariant_3_fencing,
                invariant_4_no_resurrection,
                invariant_5_bounded_retries,
                invariant_6_dedup_window,
                invariant_7_one_clock,
            ],
        }
    };
    ($backend:expr) => {
        $crate::conformance_suite! { @list @tests $backend; }
    };
}
