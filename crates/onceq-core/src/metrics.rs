//! Names of the metrics every store emits through the `metrics` facade (docs/design.md,
//! "Observability"). Most are labelled `queue`; some also `reason`; commits and producers are
//! not (a commit spans queues). A server that installs a
//! Prometheus recorder exposes them at `/metrics`; without a recorder they cost nothing.

/// Counter: jobs created by enqueues (duplicates excluded).
pub const ENQUEUED: &str = "onceq_jobs_enqueued_total";
/// Counter: enqueues absorbed by producer dedup (the same dedup id within the window).
pub const DUPLICATES_SUPPRESSED: &str = "onceq_duplicates_suppressed_total";
/// Counter: jobs handed out by leases (every attempt).
pub const DELIVERIES: &str = "onceq_deliveries_total";
/// Counter: jobs made available again; `reason` is `nack`, `lease_expired`, or `released` (a
/// lease given back without counting as an attempt).
pub const REDELIVERIES: &str = "onceq_redeliveries_total";
/// Counter: settle calls refused because the token was not the job's current lease (or the job
/// was gone); `queue` is empty when the job no longer exists.
pub const STALE_LEASE_REJECTIONS: &str = "onceq_stale_lease_rejections_total";
/// Counter: lease extensions.
pub const LEASE_EXTENSIONS: &str = "onceq_lease_extensions_total";
/// Counter: acks.
pub const ACKS: &str = "onceq_acks_total";
/// Counter: jobs dead-lettered; `reason` is `attempts_exhausted`, `failed` or `killed` (failed by
/// an operator, `POST /v1/jobs/{id}/kill`). Its rate is the DLQ ingestion velocity.
pub const DEAD_LETTERED: &str = "onceq_dead_lettered_total";
/// Counter: jobs cancelled (`POST /v1/jobs/{id}/cancel`): counted when the job ends
/// `cancelled`, at once for a job that was not leased, at the end of its lease for one that was.
pub const JOBS_CANCELLED: &str = "onceq_jobs_cancelled_total";
/// Counter: jobs deleted by an operator (`DELETE /v1/jobs/{id}`).
pub const JOBS_DELETED: &str = "onceq_jobs_deleted_total";
/// Counter: dead jobs made ready again.
pub const REDRIVEN: &str = "onceq_redriven_total";
/// Histogram (seconds): enqueue to first lease.
pub const ENQUEUE_TO_LEASE: &str = "onceq_enqueue_to_lease_seconds";
/// Histogram (seconds): lease to ack.
pub const LEASE_TO_ACK: &str = "onceq_lease_to_ack_seconds";
/// Gauge, set at scrape: jobs by `state` (`ready`, `scheduled`, `leased`, `dead`, `blocked`, `cancelled`).
pub const QUEUE_DEPTH: &str = "onceq_queue_depth";
/// Gauge, set at scrape: age of the oldest ready job (0 when none is ready).
pub const OLDEST_READY_AGE: &str = "onceq_oldest_ready_age_seconds";
/// Gauge, set at scrape: 1 when the queue is paused.
pub const QUEUE_PAUSED: &str = "onceq_queue_paused";
/// Counter: idempotency-store checks by `outcome` (`acquired`, `in_progress`, `completed`,
/// `error`); completed over all is the idempotency hit ratio.
pub const IDEMPOTENCY_CHECKS: &str = "onceq_idempotency_checks_total";
/// Counter: deliveries whose effect was already applied (detected by the idempotency store and
/// acked without running the handler).
pub const DUPLICATES_DETECTED: &str = "onceq_duplicates_detected_total";
/// Histogram (seconds): how long handlers ran.
pub const HANDLER_DURATION: &str = "onceq_handler_duration_seconds";
/// Counter: rebalances of a consumer group (labels `queue`, `group`).
pub const GROUP_REBALANCES: &str = "onceq_group_rebalances_total";
/// Counter: partitions handed from one member to another (or from a departed one).
pub const GROUP_PARTITIONS_MOVED: &str = "onceq_group_partitions_moved_total";
/// Counter: members removed because they missed their session timeout.
pub const GROUP_MEMBERS_EXPIRED: &str = "onceq_group_members_expired_total";
/// Histogram (seconds): how long a partition sat with no owner that may lease from it, each time
/// one is handed over.
pub const GROUP_PARTITION_IDLE: &str = "onceq_group_partition_idle_seconds";
/// Gauge, set at scrape: members of a group.
pub const GROUP_MEMBERS: &str = "onceq_group_members";
/// Gauge, set at scrape: age of the oldest ready job of each `partition` of a group's queue.
pub const PARTITION_OLDEST_READY_AGE: &str = "onceq_partition_oldest_ready_age_seconds";
/// Counter: commits by `outcome`: `applied`, `replayed` (a retry of an applied commit id),
/// `lease_lost`, `fenced`, `conflict` (a commit id reused for other content), `invalid`, or
/// `error` (the store could not answer). No `queue` label: a commit spans queues.
pub const COMMITS: &str = "onceq_commits_total";
/// Counter: commits and enqueues of a `producer` refused because a newer epoch of it registered:
/// a zombie instance still running.
pub const PRODUCER_FENCED: &str = "onceq_producer_fenced_total";
/// Counter: registrations of a `producer` (each bumps its epoch and fences the older ones).
pub const PRODUCER_REGISTRATIONS: &str = "onceq_producer_registrations_total";

// --- Flow control (rate, in-flight and depth limits) ---
/// Counter: jobs a lease asked for and found ready but a limit held back, by `queue` and
/// `limit` (`rate`, `in_flight`, `rate_per_key` or `in_flight_per_key`; per key: the candidates a
/// lease skipped).
pub const FLOW_HELD_BACK: &str = "onceq_flow_held_back_total";
/// Histogram (seconds): how long a long-poll lease waited for a limit (a token of the rate
/// limit, or a free in-flight slot) while jobs were ready, each time it ended such a wait.
pub const FLOW_WAIT: &str = "onceq_flow_wait_seconds";
/// Counter: enqueues and commits refused whole because they would take a queue past its
/// `max_depth`, by `queue`.
pub const MAX_DEPTH_REFUSALS: &str = "onceq_max_depth_refusals_total";

/// Counter: jobs enqueued by schedule ticks (label `schedule`); a tick whose job already existed
/// (its dedup id seen) is not counted.
pub const SCHEDULE_TICKS_ENQUEUED: &str = "onceq_schedule_ticks_enqueued_total";
/// Counter: missed ticks that fired no job (label `schedule`): catch-up `skip`, the ticks `one`
/// folds into one job, and those past `SCHEDULE_CATCH_UP_MAX` under `all`.
pub const SCHEDULE_TICKS_SKIPPED: &str = "onceq_schedule_ticks_skipped_total";
/// Histogram (seconds): how long after its time each tick fired (label `schedule`).
pub const SCHEDULE_TICK_LATENESS: &str = "onceq_schedule_tick_lateness_seconds";
/// Gauge, labels `queue` and `advice`: 1 while the server advises on the queue (`lease_timeout`:
/// handlers hold their leases for most of the visibility timeout), else 0.
pub const QUEUE_ADVICE: &str = "onceq_queue_advice";
