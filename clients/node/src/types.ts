// The wire types of docs/api.md. Field names are the contract's own (snake_case), so that page
// is the reference for every field here; times are RFC 3339 strings, job ids decimal strings.

/** Any JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type Delivery = "at_most_once" | "at_least_once" | "effectively_once";
export type Jitter = "full" | "equal" | "none";
export type JobState = "scheduled" | "ready" | "leased" | "dead" | "blocked" | "cancelled";

export interface Backoff {
  initial_ms: number;
  max_ms: number;
  multiplier: number;
  jitter: Jitter;
}

export interface RateLimit {
  per_second: number;
  burst: number;
}

/** How hard a queue's writes reach the disk before their replies: `fsync` survives power loss, `relaxed` a crash of the server process. */
export type Durability = "fsync" | "relaxed";

/** A queue's whole config, as `PUT /v1/queues/{queue}` returns it. */
export interface QueueConfig {
  delivery: Delivery;
  visibility_timeout_ms: number;
  max_attempts: number;
  backoff: Backoff;
  dedup_window_ms: number;
  ordering: "none" | "per_key";
  partitions: number;
  dead_blocks_key: boolean;
  rate_limit?: RateLimit;
  rate_limit_by?: string;
  max_in_flight?: number;
  max_in_flight_per_key?: number;
  max_depth?: number;
  /** Absent: the server's own durability. */
  durability?: Durability;
}

/** A patch of a queue's config: the fields given replace the queue's; `null` removes a limit. */
export interface QueuePatch {
  delivery?: Delivery;
  visibility_timeout_ms?: number;
  max_attempts?: number;
  backoff?: Partial<Backoff>;
  dedup_window_ms?: number;
  ordering?: "none" | "per_key";
  partitions?: number;
  dead_blocks_key?: boolean;
  rate_limit?: RateLimit | null;
  rate_limit_by?: string | null;
  max_in_flight?: number | null;
  max_in_flight_per_key?: number | null;
  max_depth?: number | null;
  /** `null` goes back to the server's own durability. */
  durability?: Durability | null;
}

export interface QueueStats {
  ready: number;
  scheduled: number;
  leased: number;
  dead: number;
  blocked: number;
  /** Cancelled jobs, kept until the queue is deleted. */
  cancelled: number;
  oldest_ready_age_ms: number | null;
}

/** A piece of the lease adviser's advice (`lease_timeout`: handlers hold their leases for most of the visibility timeout, so jobs get delivered twice). */
export interface Advice {
  kind: string;
  message: string;
}

export interface Queue {
  name: string;
  config: QueueConfig;
  paused: boolean;
  stats: QueueStats;
  /** What the server's lease adviser sees wrong with the queue (`GET /v1/queues/{queue}` only; empty when nothing). */
  advice?: Advice[];
}

export interface QueuePage {
  queues: Queue[];
  next: string | null;
}

/** One job to enqueue: exactly one of `payload` and `payload_base64`. */
export interface NewJob {
  payload?: Json;
  payload_base64?: string;
  delay_ms?: number;
  run_at?: string;
  priority?: number;
  max_attempts?: number;
  dedup_id?: string;
  headers?: Record<string, string>;
  ordering_key?: string;
  /** No second job of this key while the first holds it (docs/api.md, "Unique jobs"). */
  unique?: Unique;
}

/** A job's `unique`: its key (`by`) and how long the job holds it (`while`; `window` needs `window_ms`). */
export interface Unique {
  by: "dedup_id" | "payload";
  while: "pending" | "active" | "window";
  /** With `while: "window"` only: 1 to 604,800,000 ms. */
  window_ms?: number;
}

export interface Enqueued {
  id: string;
  duplicate: boolean;
}

export interface Producer {
  id: string;
  epoch: number;
}

export interface AttemptError {
  attempt: number;
  error: string;
  at: string;
}

/** A job as `GET /v1/jobs/{id}` returns it. */
export interface Job {
  id: string;
  queue: string;
  state: JobState;
  attempt: number;
  max_attempts: number;
  priority: number;
  payload: Json;
  payload_base64?: string;
  headers: Record<string, string>;
  dedup_id: string | null;
  ordering_key?: string;
  partition?: number;
  /** When it was cancelled (state `cancelled`), or, while `leased`, when a cancel was asked for. */
  cancelled_at?: string;
  enqueued_at: string;
  run_at: string;
  lease_expires_at: string | null;
  errors: AttemptError[];
}

/** A job under a lease, as a lease returns it. */
export interface LeasedJob {
  id: string;
  queue: string;
  lease_token: string;
  attempt: number;
  max_attempts: number;
  priority: number;
  payload: Json;
  payload_base64?: string;
  headers: Record<string, string>;
  dedup_id: string | null;
  ordering_key?: string;
  partition?: number;
  enqueued_at: string;
  run_at: string;
  lease_expires_at: string;
}

export interface LeaseOptions {
  max_jobs?: number;
  visibility_timeout_ms?: number;
  wait_ms?: number;
  group?: string;
  member_id?: string;
}

export interface AckItem {
  id: string;
  lease_token: string;
}
export interface NackItem extends AckItem {
  delay_ms?: number;
  error?: string;
}
export interface ExtendItem extends AckItem {
  visibility_timeout_ms: number;
}
export interface FailItem extends AckItem {
  error: string;
}
export interface ReleaseItem extends AckItem {
  delay_ms?: number;
}

/** One item's result of a batch settle. */
export interface SettleResult {
  id: string;
  ok: boolean;
  error?: { code: string; message: string };
  outcome?: "retrying" | "dead";
  run_at?: string;
  lease_expires_at?: string;
}

export interface DeadPage {
  jobs: Job[];
  next: string | null;
}

/** Which dead jobs a redrive takes, and where to; the filters combine (docs/api.md). */
export interface RedriveFilter {
  /** Only these job ids (at most 1000). */
  ids?: string[];
  /** At most this many, oldest id first. */
  limit?: number;
  /** Only jobs whose last error (the one they died of) contains this text, case-sensitive. */
  error_contains?: string;
  /** Only jobs that died at or after this RFC 3339 time. */
  dead_after?: string;
  /** Only jobs that died before this RFC 3339 time. */
  dead_before?: string;
  /** Only jobs that died after at least this many attempts. */
  min_attempts?: number;
  /** Into this existing queue instead of their own. */
  to_queue?: string;
}

/** The options of `deadRedrive`: the filters, plus paging and a dry run. */
export interface RedriveOptions extends RedriveFilter {
  /** Only jobs with a higher id: pass the previous result's `last` to redrive in steps. */
  after?: string;
  /** Count the matching jobs, redrive none. */
  dry_run?: boolean;
}

/** The reply of a redrive that runs now. */
export interface RedriveResult {
  /** Dead jobs that pass the filters (the limit aside). */
  matched: number;
  /** Jobs made ready (0 in a dry run). */
  redriven: number;
  /** The highest id redriven, if any. */
  last: string | null;
}

/** A paced redrive, as `GET /v1/redrives/{id}` shows it. */
export interface PacedRedrive {
  id: string;
  /** The queue whose dead letters it redrives. */
  queue: string;
  /** The request's filter fields (`dead_before` capped at its start). */
  filter: RedriveFilter & { after?: string; dry_run?: boolean };
  rate_per_second: number;
  state: "running" | "stopped" | "done";
  /** Dead jobs that matched when it started. */
  matched: number;
  /** Jobs redriven so far. */
  redriven: number;
  /** The highest id redriven so far. */
  cursor: string | null;
  created_at: string;
  finished_at: string | null;
  /** Why it stopped, when an error stopped it (its queue or `to_queue` was deleted). */
  error: string | null;
}

export interface MemberView {
  member_id: string;
  generation: number;
  partitions: number[];
  revoking: number[];
  heartbeat_interval_ms: number;
}

export interface Group {
  group: string;
  generation: number;
  members: {
    member_id: string;
    name: string | null;
    partitions: number[];
    revoking: number[];
    session_timeout_ms: number;
    joined_at: string;
    last_heartbeat_at: string;
  }[];
  partitions: {
    partition: number;
    owner: string | null;
    moving_to: string | null;
    lag: number;
    ready: number;
    oldest_ready_age_ms: number | null;
  }[];
}

export interface CommitRequest {
  commit_id?: string;
  producer?: Producer;
  ack?: AckItem[];
  nack?: NackItem[];
  fail?: FailItem[];
  release?: ReleaseItem[];
  enqueue?: { queue: string; jobs: NewJob[] }[];
  checkpoint?: Json;
}

export interface CommitResult {
  enqueued: { queue: string; jobs: Enqueued[] }[];
  replayed: boolean;
}

export interface ProducerState {
  id: string;
  epoch: number;
  checkpoint: Json;
}

export interface ScheduleSpec {
  queue: string;
  cron: string;
  timezone?: string;
  payload?: Json;
  payload_base64?: string;
  job?: { priority?: number; headers?: Record<string, string>; max_attempts?: number; ordering_key?: string };
  catch_up?: "skip" | "one" | "all";
  paused?: boolean;
}

export interface Schedule {
  name: string;
  queue: string;
  cron: string;
  timezone: string;
  payload: Json;
  payload_base64?: string;
  job: { priority?: number; headers?: Record<string, string>; max_attempts?: number; ordering_key?: string };
  catch_up: "skip" | "one" | "all";
  paused: boolean;
  next_tick: string | null;
  next_ticks: string[];
  last_tick: string | null;
  last_job_id: string | null;
}

export interface ScheduleTicks {
  fired: { schedule: string; tick: string; job_id: string; duplicate: boolean }[];
  skipped: number;
}

/** What `POST /v1/idempotency/{key}/begin` found. */
export type BeginOutcome =
  | { state: "acquired" }
  | { state: "in_progress"; owner: string; until: string }
  | { state: "completed"; result: Json };
