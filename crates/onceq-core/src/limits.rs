//! Every bound onceq enforces (docs/design.md, Invariant 8), in one place.
//!
//! A request past any of these gets a typed [`crate::Error`], never a panic and never a silent
//! truncation (the one exception is an attempt's error text, see [`ERROR_TEXT_BYTES_MAX`]).
//! Relations between the constants are checked at compile time at the bottom of this file.

/// Longest queue name, in bytes. Names use `[A-Za-z0-9._-]` only.
pub const QUEUE_NAME_LEN_MAX: usize = 128;
/// Largest job payload, in bytes (1 MiB, as SQS).
pub const PAYLOAD_BYTES_MAX: usize = 1024 * 1024;
/// Most jobs in one enqueue call.
pub const ENQUEUE_BATCH_MAX: usize = 1000;
/// Most jobs one lease call hands out.
pub const LEASE_BATCH_MAX: u32 = 1000;
/// Most items in one ack / nack / extend / fail call.
pub const SETTLE_BATCH_MAX: usize = 1000;
/// Longest a lease call may wait for a job (long poll), in milliseconds.
pub const WAIT_MS_MAX: u64 = 20_000;
/// Shortest visibility timeout, in milliseconds.
pub const VISIBILITY_TIMEOUT_MS_MIN: u64 = 1;
/// Longest visibility timeout, in milliseconds (12 hours, as SQS).
pub const VISIBILITY_TIMEOUT_MS_MAX: u64 = 12 * 60 * 60 * 1000;
/// Most leases a job may have before it is dead-lettered.
pub const ATTEMPTS_MAX: u32 = 1000;
/// Most headers on one job.
pub const HEADERS_COUNT_MAX: usize = 64;
/// Longest header name, in bytes.
pub const HEADER_NAME_LEN_MAX: usize = 128;
/// Longest header value, in bytes.
pub const HEADER_VALUE_LEN_MAX: usize = 4096;
/// Longest dedup id, in bytes.
pub const DEDUP_ID_LEN_MAX: usize = 256;
/// Longest dedup window, in milliseconds (7 days).
pub const DEDUP_WINDOW_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Longest `window_ms` of a unique job held `while: window`, in milliseconds (7 days, the
/// longest dedup window).
pub const UNIQUE_WINDOW_MS_MAX: u64 = DEDUP_WINDOW_MS_MAX;
/// Longest delay before a job (or a retry) runs, in milliseconds (365 days).
pub const DELAY_MS_MAX: u64 = 365 * 24 * 60 * 60 * 1000;
/// Lowest job priority.
pub const PRIORITY_MIN: i32 = -1_000_000;
/// Highest job priority (higher runs first).
pub const PRIORITY_MAX: i32 = 1_000_000;
/// Longest error text kept per attempt, in bytes. Longer text is cut at a character boundary and
/// marked with `…`: a worker reporting a huge panic message must still be able to nack.
pub const ERROR_TEXT_BYTES_MAX: usize = 4096;
/// Largest backoff multiplier.
pub const BACKOFF_MULTIPLIER_MAX: f64 = 100.0;
/// Most dead jobs one listing page returns.
pub const DEAD_PAGE_MAX: u32 = 1000;
/// Most jobs one page of a queue's jobs in one state returns (`Inspect::job_page`).
pub const JOB_PAGE_MAX: u32 = 500;
/// Most payload bytes one lease hands out: a lease stops adding jobs once the payloads it holds
/// reach this, so it returns fewer than `max_jobs` (always at least one) rather than a reply of up
/// to `LEASE_BATCH_MAX` × `PAYLOAD_BYTES_MAX`. Never a failure.
pub const LEASE_REPLY_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most queues one page of `GET /v1/queues` returns.
pub const QUEUE_PAGE_MAX: u32 = 1000;
/// Queues a page of `GET /v1/queues` returns when it names no `limit`.
pub const QUEUE_PAGE_DEFAULT: u32 = 100;
/// Most ids one redrive call may name.
pub const REDRIVE_IDS_MAX: usize = 1000;
/// Longest `error_contains` filter of a redrive, in bytes: no stored error is longer.
pub const REDRIVE_FILTER_BYTES_MAX: usize = ERROR_TEXT_BYTES_MAX;
/// Highest rate of a paced redrive, jobs per second.
pub const REDRIVE_RATE_MAX: u32 = 10_000;
/// Most jobs one step of a paced redrive moves (one transaction).
pub const REDRIVE_STEP_MAX: usize = 1000;
/// Most paced redrives a listing returns (the running ones first, then the latest finished);
/// a store forgets finished ones past it.
pub const REDRIVE_LIST_MAX: usize = 100;
/// Most paced redrives a store keeps running at once.
pub const REDRIVES_RUNNING_MAX: usize = 100;
/// Most paced redrives running at once on one queue: more would only split its pace.
pub const REDRIVES_RUNNING_PER_QUEUE_MAX: usize = 10;
/// How often a store steps its running paced redrives, in milliseconds.
pub const REDRIVE_STEP_INTERVAL_MS: u64 = 100;
const _: () = assert!(REDRIVES_RUNNING_MAX <= REDRIVE_LIST_MAX);
const _: () = assert!(REDRIVES_RUNNING_PER_QUEUE_MAX <= REDRIVES_RUNNING_MAX);
/// Longest ordering key, in bytes (any UTF-8).
pub const ORDERING_KEY_LEN_MAX: usize = 256;
/// Most partitions of a `per_key` queue. A member's lease looks into each partition it owns, so
/// the count bounds that work; 256 lets a group grow to 256 members, each with work to do.
pub const PARTITIONS_MAX: u32 = 256;
/// Partitions of a `per_key` queue that does not name a count: enough for a group of up to 16
/// members to share the work evenly (1, 2, 4, 8 and 16 members each own the same number), few
/// enough that one member owning them all leases cheaply.
pub const PARTITIONS_DEFAULT: u32 = 16;
/// Longest consumer group name, in bytes (`[A-Za-z0-9._-]`).
pub const GROUP_NAME_LEN_MAX: usize = 128;
/// Longest member name, in bytes.
pub const MEMBER_NAME_LEN_MAX: usize = 128;
/// Shortest session timeout of a group member, in milliseconds.
pub const SESSION_TIMEOUT_MS_MIN: u64 = 100;
/// Longest session timeout of a group member, in milliseconds (5 minutes).
pub const SESSION_TIMEOUT_MS_MAX: u64 = 5 * 60 * 1000;
/// Session timeout of a member that names none (as Kafka's before 3.0): a crashed member's
/// partitions wait this long, plus their leases' visibility timeout, before they move.
pub const SESSION_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Longest commit id, in bytes.
pub const COMMIT_ID_LEN_MAX: usize = 128;
/// Longest producer id, in bytes.
pub const PRODUCER_ID_LEN_MAX: usize = 128;
/// Most queues one commit enqueues into.
pub const COMMIT_QUEUES_MAX: usize = 64;
/// Most payload bytes one commit enqueues, all jobs together (16 MiB): a commit is one
/// transaction, held in memory whole.
pub const COMMIT_PAYLOAD_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Shortest time a commit id is remembered for replay, in milliseconds (5 minutes): a commit's
/// id lasts the longest dedup window of the queues it touches, and at least this long.
pub const COMMIT_REPLAY_MS_MIN: u64 = 5 * 60 * 1000;
/// Largest producer checkpoint, as JSON, in bytes (64 KiB): an offset or a cursor, not data.
pub const CHECKPOINT_BYTES_MAX: usize = 64 * 1024;

// --- Flow control (rate, in-flight and depth limits of a queue; `crate::flow`) ---
/// Slowest rate limit, in leases per second (one lease every 1000 s).
pub const RATE_PER_SECOND_MIN: f64 = 0.001;
/// Fastest rate limit, in leases per second: a lease interval of 1 µs, above what any store
/// leases, so a limit there never binds.
pub const RATE_PER_SECOND_MAX: f64 = 1_000_000.0;
/// Largest burst of a rate limit.
pub const RATE_BURST_MAX: u32 = 100_000;
/// Largest `max_in_flight` of a queue (live leases summed over every consumer).
pub const IN_FLIGHT_MAX: u32 = 1_000_000;
/// Largest `max_depth` of a queue (jobs ready, scheduled, leased or blocked). PostgreSQL counts
/// the queue's jobs up to this bound on each enqueue into a queue that has one.
pub const QUEUE_DEPTH_MAX: u64 = 1_000_000;
/// `Retry-After` of an enqueue refused by `max_depth`, in milliseconds: the store cannot know
/// when consumers make room, so it names a short pause and clients back off from it.
pub const MAX_DEPTH_RETRY_AFTER_MS: u64 = 1_000;
/// Longest a client or worker waits between two tries of a request refused by a limit, before
/// jitter, in milliseconds (`crate::flow::retry_delay`).
pub const RATE_LIMITED_BACKOFF_MS_MAX: u64 = 30_000;

/// Candidate rows a lease of a queue with per-key limits (`rate_limit_by`,
/// `max_in_flight_per_key`) reads per job asked: it skips the jobs whose key has no token or is
/// at its cap and takes later jobs of other keys, from this many rows per job at most.
pub const FLOW_KEY_SCAN_FACTOR: u32 = 4;
/// Fewest candidate rows such a lease reads, however few jobs it asks for.
pub const FLOW_KEY_SCAN_MIN: u32 = 64;
/// Most candidate rows such a lease reads: past them it returns what it found (possibly
/// nothing), so a lease never walks the whole backlog behind keys that are held back.
pub const FLOW_KEY_SCAN_MAX: u32 = 4 * LEASE_BATCH_MAX;
/// Most per-key rate buckets the embedded store keeps in memory for one queue. A bucket that has
/// refilled is dropped (it equals a new one); when this many are all still refilling, jobs of a
/// key with no bucket wait until one refills.
pub const FLOW_KEY_BUCKETS_MAX: usize = 100_000;
/// Most refilled per-key rate buckets PostgreSQL deletes in one lease (a refilled bucket equals
/// a new one, so the table holds about the keys leased within one burst of their rate).
pub const FLOW_KEY_SWEEP_MAX: u32 = 64;

const _: () = assert!(RATE_PER_SECOND_MIN > 0.0 && RATE_PER_SECOND_MIN < RATE_PER_SECOND_MAX);
// The rate-limit interval in nanoseconds fits an i64 many times over.
const _: () = assert!(1e9 / RATE_PER_SECOND_MIN < 1e15);
const _: () = assert!(RATE_BURST_MAX as u64 * (1e9 / RATE_PER_SECOND_MIN) as u64 <= i64::MAX as u64 / 4);
const _: () = assert!(LEASE_BATCH_MAX <= IN_FLIGHT_MAX);
const _: () = assert!(ENQUEUE_BATCH_MAX as u64 <= QUEUE_DEPTH_MAX);
const _: () = assert!(MAX_DEPTH_RETRY_AFTER_MS <= RATE_LIMITED_BACKOFF_MS_MAX);
const _: () = assert!(FLOW_KEY_SCAN_FACTOR >= 1 && FLOW_KEY_SCAN_MIN <= FLOW_KEY_SCAN_MAX);
const _: () = assert!(LEASE_BATCH_MAX <= FLOW_KEY_SCAN_MAX);

// Schedules (`onceq_core::schedule`).
/// Longest schedule name, in bytes (`[A-Za-z0-9._-]`).
pub const SCHEDULE_NAME_LEN_MAX: usize = 128;
/// Longest cron expression, in bytes.
pub const SCHEDULE_CRON_LEN_MAX: usize = 256;
/// A due tick fired at most this long after its time is on time and fires under every catch-up
/// policy; an older one was missed (docs/api.md, "Schedules"). A minute: wide enough for a store
/// that was busy or restarting for a moment, narrow enough that `skip` skips a real outage.
pub const SCHEDULE_TICK_GRACE_MS: u64 = 60_000;
/// Most missed ticks that catch-up `all` fires in one pass: the latest ones; older missed ticks
/// are skipped. Bounds the jobs (and the transaction) one long outage of a fast schedule makes.
pub const SCHEDULE_CATCH_UP_MAX: usize = 100;
/// Most missed ticks one pass counts as skipped (for the metric): a year-long outage of a
/// one-second schedule is not walked tick by tick.
pub const SCHEDULE_TICK_SCAN_MAX: u64 = 100_000;
/// Upcoming ticks a schedule read shows.
pub const SCHEDULE_NEXT_TICKS_SHOWN: usize = 5;
/// Most schedules one listing returns (all of them, up to this).
pub const SCHEDULE_LIST_MAX: usize = 10_000;
/// Most schedules one firing pass fires: the most overdue first; the rest are next.
pub const SCHEDULE_TICK_BATCH_MAX: usize = 100;

const _: () = assert!(SCHEDULE_TICK_GRACE_MS >= 1000);
const _: () = assert!(SCHEDULE_CATCH_UP_MAX <= ENQUEUE_BATCH_MAX);

const _: () = assert!(VISIBILITY_TIMEOUT_MS_MIN <= VISIBILITY_TIMEOUT_MS_MAX);
const _: () = assert!(PRIORITY_MIN < 0 && 0 < PRIORITY_MAX);
const _: () = assert!(LEASE_BATCH_MAX as usize <= SETTLE_BATCH_MAX);
const _: () = assert!(ENQUEUE_BATCH_MAX <= SETTLE_BATCH_MAX);
const _: () = assert!(WAIT_MS_MAX < VISIBILITY_TIMEOUT_MS_MAX);
const _: () = assert!(ATTEMPTS_MAX >= 1);
const _: () = assert!(PAYLOAD_BYTES_MAX <= COMMIT_PAYLOAD_BYTES_MAX);
const _: () = assert!(DEDUP_WINDOW_MS_MAX <= DELAY_MS_MAX);
const _: () = assert!(UNIQUE_WINDOW_MS_MAX <= DEDUP_WINDOW_MS_MAX);
const _: () = assert!(
    SESSION_TIMEOUT_MS_MIN <= SESSION_TIMEOUT_MS_DEFAULT && SESSION_TIMEOUT_MS_DEFAULT <= SESSION_TIMEOUT_MS_MAX
);
const _: () = assert!(1 <= PARTITIONS_DEFAULT && PARTITIONS_DEFAULT <= PARTITIONS_MAX);
