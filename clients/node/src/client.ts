// The HTTP client: one method per endpoint of docs/api.md, each returning a promise of the
// typed reply and taking an AbortSignal. Built on Node's own fetch (Node 20 and later), so the
// package has no runtime dependency.

import { errorFromReply, OnceqError, RateLimited, Unavailable } from "./errors.js";
import type {
  AckItem, BeginOutcome, CommitRequest, CommitResult, DeadPage, Enqueued, ExtendItem, FailItem, Group, Job, Json,
  LeasedJob, LeaseOptions, MemberView, NackItem, NewJob, PacedRedrive, Producer, ProducerState, Queue, QueueConfig,
  QueuePage, QueuePatch, RedriveFilter, RedriveOptions, RedriveResult, ReleaseItem, Schedule, ScheduleSpec,
  ScheduleTicks, SettleResult,
} from "./types.js";

/** Longest wait of one request unless configured: past the server's own 60 s request limit. */
export const REQUEST_TIMEOUT_MS_DEFAULT = 65_000;
/** Tries of an enqueue or commit refused with 429 `rate_limited`, unless configured (as the Rust client). */
export const RATE_LIMITED_TRIES_DEFAULT = 4;
/** Longest pause between two tries of a refused enqueue. */
export const RATE_LIMITED_PAUSE_MS_MAX = 30_000;
/** Items per batch settle, and jobs per enqueue or lease (docs/api.md, "Limits"). */
export const BATCH_ITEMS_MAX = 1000;
/** Job ids per redrive (docs/api.md, "Limits"). */
export const REDRIVE_IDS_MAX = 1000;
/** Fastest pace of a paced redrive, jobs per second. */
export const RATE_PER_SECOND_MAX = 10_000;

export interface ClientOptions {
  /** Where `onceq serve` listens, e.g. `http://127.0.0.1:7700`. */
  url: string;
  /** A bearer token, when the server has auth on. */
  token?: string;
  /** Longest wait of one request in ms (default 65,000). A call's own signal can end it sooner. */
  requestTimeoutMs?: number;
  /** Tries of an enqueue or commit refused by a full queue (429), each no sooner than asked (default 4; 1: no retry). */
  rateLimitedTries?: number;
}

/** Options every call takes. */
export interface CallOptions {
  /** Aborts the request; the promise then rejects with the signal's reason. */
  signal?: AbortSignal;
}

export interface EnqueueOptions extends CallOptions {
  /** The `Idempotency-Key` header: the dedup id of a one-job enqueue. */
  idempotencyKey?: string;
  /** A registered producer's instance: the enqueue is refused (`Fenced`) once a newer epoch registered. */
  producer?: Producer;
}

type Method = "GET" | "POST" | "PUT" | "DELETE";

/** A path segment, percent-encoded (queue names and ids need none; idempotency keys may). */
const seg = (value: string): string => encodeURIComponent(value);

function query(params: Record<string, string | number | undefined>): string {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value !== undefined) search.set(name, String(value));
  const text = search.toString();
  return text === "" ? "" : `?${text}`;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });

/** Refuses more ids than one redrive takes before sending them. */
function checkRedriveIds(filter: RedriveFilter): void {
  if (filter.ids !== undefined && filter.ids.length > REDRIVE_IDS_MAX) {
    throw new RangeError(`onceq: a redrive takes at most ${REDRIVE_IDS_MAX} ids, got ${filter.ids.length}`);
  }
}

/** A client of one onceq server. Safe to share: it holds no per-call state. */
export class Client {
  readonly url: string;
  readonly #headers: Record<string, string>;
  readonly #timeoutMs: number;
  readonly #rateLimitedTries: number;

  constructor(options: ClientOptions | string) {
    const opts = typeof options === "string" ? { url: options } : options;
    let parsed: URL;
    try {
      parsed = new URL(opts.url);
    } catch {
      throw new TypeError(`onceq: url ${JSON.stringify(opts.url)} is not a URL; give one like http://127.0.0.1:7700`);
    }
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
      throw new TypeError(`onceq: url ${JSON.stringify(opts.url)} must be http:// or https://`);
    }
    this.url = opts.url.replace(/\/+$/, "");
    this.#headers = { "content-type": "application/json" };
    if (opts.token !== undefined) this.#headers.authorization = `Bearer ${opts.token}`;
    this.#timeoutMs = opts.requestTimeoutMs ?? REQUEST_TIMEOUT_MS_DEFAULT;
    if (!(this.#timeoutMs > 0)) throw new RangeError("onceq: requestTimeoutMs must be above 0");
    this.#rateLimitedTries = opts.rateLimitedTries ?? RATE_LIMITED_TRIES_DEFAULT;
    if (!Number.isInteger(this.#rateLimitedTries) || this.#rateLimitedTries < 1) {
      throw new RangeError("onceq: rateLimitedTries must be an integer of at least 1");
    }
  }

  /** Sends one request; resolves to the reply's text (empty for 204), rejects with an OnceqError. */
  async #send(method: Method, path: string, body: unknown, opts: CallOptions = {}, extra?: Record<string, string>): Promise<string> {
    const timeout = AbortSignal.timeout(this.#timeoutMs);
    const signal = opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout;
    let reply: Response;
    let text: string;
    try {
      reply = await fetch(this.url + path, {
        method,
        headers: extra ? { ...this.#headers, ...extra } : this.#headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
      text = await reply.text();
    } catch (error) {
      // The caller's own abort is theirs to see as it is; anything else is a connection failure.
      if (opts.signal?.aborted) throw opts.signal.reason;
      const why = timeout.aborted ? `no reply within ${this.#timeoutMs} ms` : String((error as Error)?.cause ?? error);
      throw new Unavailable("connection_failed", `onceq at ${this.url} could not be reached: ${why}`, 0, 1000, { cause: error });
    }
    if (reply.status >= 200 && reply.status < 300) return text;
    throw errorFromReply(reply.status, reply.headers, text);
  }

  async #json<T>(method: Method, path: string, body?: unknown, opts?: CallOptions, extra?: Record<string, string>): Promise<T> {
    return JSON.parse(await this.#send(method, path, body, opts, extra)) as T;
  }

  /** Sends again what a full queue refused, up to `rateLimitedTries`, doubling each pause with jitter. */
  async #retryRateLimited<T>(call: () => Promise<T>, signal?: AbortSignal): Promise<T> {
    for (let tries = 1; ; tries++) {
      try {
        return await call();
      } catch (error) {
        if (!(error instanceof RateLimited) || tries >= this.#rateLimitedTries) throw error;
        const pause = Math.min(RATE_LIMITED_PAUSE_MS_MAX, error.retryAfterMs * 2 ** (tries - 1));
        await sleep(pause + Math.random() * pause * 0.5, signal);
      }
    }
  }

  // Queues

  /** One page of queues (`limit` 1 to 1000, default 100), after the name `after`. */
  queueListPage(params: { limit?: number; after?: string } = {}, opts?: CallOptions): Promise<QueuePage> {
    return this.#json("GET", `/v1/queues${query(params)}`, undefined, opts);
  }

  /** Every queue the token may see, reading every page. */
  async queueList(opts?: CallOptions): Promise<Queue[]> {
    const all: Queue[] = [];
    let after: string | undefined;
    // Ends: each page moves `after` forward over a finite list, and the last page's `next` is null.
    for (;;) {
      const page = await this.queueListPage({ limit: 1000, after }, opts);
      all.push(...page.queues);
      if (page.next === null) return all;
      after = page.next;
    }
  }

  queuePut(queue: string, patch: QueuePatch = {}, opts?: CallOptions): Promise<QueueConfig> {
    return this.#json("PUT", `/v1/queues/${seg(queue)}`, patch, opts);
  }
  queueGet(queue: string, opts?: CallOptions): Promise<Queue> {
    return this.#json("GET", `/v1/queues/${seg(queue)}`, undefined, opts);
  }
  async queueDelete(queue: string, opts?: CallOptions): Promise<void> {
    await this.#send("DELETE", `/v1/queues/${seg(queue)}`, undefined, opts);
  }
  async queuePause(queue: string, opts?: CallOptions): Promise<void> {
    await this.#send("POST", `/v1/queues/${seg(queue)}/pause`, undefined, opts);
  }
  async queueResume(queue: string, opts?: CallOptions): Promise<void> {
    await this.#send("POST", `/v1/queues/${seg(queue)}/resume`, undefined, opts);
  }

  // Jobs

  /** Enqueues 1 to 1000 jobs, all or none; one entry per job, in order. */
  async enqueue(queue: string, jobs: NewJob[], opts: EnqueueOptions = {}): Promise<Enqueued[]> {
    const body: { jobs: NewJob[]; producer?: Producer } = { jobs };
    if (opts.producer) body.producer = opts.producer;
    const extra = opts.idempotencyKey === undefined ? undefined : { "idempotency-key": opts.idempotencyKey };
    const reply = await this.#retryRateLimited(
      () => this.#json<{ jobs: Enqueued[] }>("POST", `/v1/queues/${seg(queue)}/jobs`, body, opts, extra),
      opts.signal,
    );
    return reply.jobs;
  }

  jobGet(id: string, opts?: CallOptions): Promise<Job> {
    return this.#json("GET", `/v1/jobs/${seg(id)}`, undefined, opts);
  }

  /** Cancels a job: one not leased ends `cancelled` at once; a leased one is marked and ends cancelled unless acked. A dead job is `Conflict`. Safe to retry. */
  cancel(id: string, opts?: CallOptions): Promise<Job> {
    return this.#json("POST", `/v1/jobs/${seg(id)}/cancel`, undefined, opts);
  }

  /** Fails a job that is not leased, now: dead whatever attempts it has left, with `error` recorded ("failed by an operator" when absent). A leased or cancelled job is `Conflict`; a dead one comes back as it is. Needs `admin`; safe to retry. */
  kill(id: string, error?: string, opts?: CallOptions): Promise<Job> {
    return this.#json("POST", `/v1/jobs/${seg(id)}/kill`, error === undefined ? {} : { error }, opts);
  }

  /** Deletes a job that is not leased, with its error history. A leased job is `Conflict`; one that is gone is `NotFound`. Needs `admin`. */
  async delete(id: string, opts?: CallOptions): Promise<void> {
    await this.#send("DELETE", `/v1/jobs/${seg(id)}`, undefined, opts);
  }

  /** Leases up to `max_jobs` ready jobs (waiting up to `wait_ms` for one). */
  async lease(queue: string, options: LeaseOptions = {}, opts?: CallOptions): Promise<LeasedJob[]> {
    const reply = await this.#json<{ jobs: LeasedJob[] }>("POST", `/v1/queues/${seg(queue)}/leases`, options, opts);
    return reply.jobs;
  }

  async ack(id: string, leaseToken: string, opts?: CallOptions): Promise<void> {
    await this.#send("POST", `/v1/jobs/${seg(id)}/ack`, { lease_token: leaseToken }, opts);
  }
  async nack(id: string, leaseToken: string, options: { delay_ms?: number; error?: string } = {}, opts?: CallOptions): Promise<void> {
    await this.#send("POST", `/v1/jobs/${seg(id)}/nack`, { lease_token: leaseToken, ...options }, opts);
  }
  /** Extends the lease to `visibilityTimeoutMs` from now; resolves to the new expiry. */
  async extend(id: string, leaseToken: string, visibilityTimeoutMs: number, opts?: CallOptions): Promise<string> {
    const body = { lease_token: leaseToken, visibility_timeout_ms: visibilityTimeoutMs };
    const reply = await this.#json<{ lease_expires_at: string }>("POST", `/v1/jobs/${seg(id)}/extend`, body, opts);
    return reply.lease_expires_at;
  }
  async fail(id: string, leaseToken: string, error: string, opts?: CallOptions): Promise<void> {
    await this.#send("POST", `/v1/jobs/${seg(id)}/fail`, { lease_token: leaseToken, error }, opts);
  }
  async release(id: string, leaseToken: string, options: { delay_ms?: number } = {}, opts?: CallOptions): Promise<void> {
    await this.#send("POST", `/v1/jobs/${seg(id)}/release`, { lease_token: leaseToken, ...options }, opts);
  }

  // Batch settles: each item is judged on its own; one result per item, in order.

  async #batch(path: string, field: string, items: unknown[], opts?: CallOptions): Promise<SettleResult[]> {
    return (await this.#json<{ results: SettleResult[] }>("POST", path, { [field]: items }, opts)).results;
  }
  acks(items: AckItem[], opts?: CallOptions): Promise<SettleResult[]> {
    return this.#batch("/v1/acks", "acks", items, opts);
  }
  nacks(items: NackItem[], opts?: CallOptions): Promise<SettleResult[]> {
    return this.#batch("/v1/nacks", "nacks", items, opts);
  }
  extends(items: ExtendItem[], opts?: CallOptions): Promise<SettleResult[]> {
    return this.#batch("/v1/extends", "extends", items, opts);
  }
  fails(items: FailItem[], opts?: CallOptions): Promise<SettleResult[]> {
    return this.#batch("/v1/fails", "fails", items, opts);
  }
  releases(items: ReleaseItem[], opts?: CallOptions): Promise<SettleResult[]> {
    return this.#batch("/v1/releases", "releases", items, opts);
  }

  // Dead letters

  deadList(queue: string, params: { limit?: number; after?: string } = {}, opts?: CallOptions): Promise<DeadPage> {
    return this.#json("GET", `/v1/queues/${seg(queue)}/dead${query(params)}`, undefined, opts);
  }
  /**
   * Makes dead jobs ready again, now: every one, or those that pass all the filters given
   * (`ids`, `limit`, `error_contains`, `dead_after`, `dead_before`, `min_attempts`, `after`,
   * `to_queue`, `dry_run`). Resolves to how many matched and were redriven, and the last id.
   */
  async deadRedrive(queue: string, options: RedriveOptions = {}, opts?: CallOptions): Promise<RedriveResult> {
    checkRedriveIds(options);
    return this.#json("POST", `/v1/queues/${seg(queue)}/dead/redrive`, options, opts);
  }
  async deadPurge(queue: string, opts?: CallOptions): Promise<number> {
    return (await this.#json<{ purged: number }>("DELETE", `/v1/queues/${seg(queue)}/dead`, undefined, opts)).purged;
  }

  // Paced redrives

  /**
   * Starts a paced redrive: the server moves the dead jobs that pass `filter` in the background,
   * `ratePerSecond` (1 to 10,000) a second, oldest id first, across restarts. Only jobs dead by now
   * are taken. Rejects with `Conflict` when 100 paced redrives already run.
   */
  async redriveStart(queue: string, ratePerSecond: number, filter: RedriveFilter = {}, opts?: CallOptions): Promise<PacedRedrive> {
    if (!Number.isInteger(ratePerSecond) || ratePerSecond < 1 || ratePerSecond > RATE_PER_SECOND_MAX) {
      throw new RangeError(`onceq: ratePerSecond must be an integer from 1 to ${RATE_PER_SECOND_MAX}, got ${ratePerSecond}`);
    }
    checkRedriveIds(filter);
    return this.#json("POST", `/v1/queues/${seg(queue)}/dead/redrive`, { ...filter, rate_per_second: ratePerSecond }, opts);
  }
  /** One paced redrive; rejects with `NotFound` when there is none. */
  redriveGet(id: string, opts?: CallOptions): Promise<PacedRedrive> {
    return this.#json("GET", `/v1/redrives/${seg(id)}`, undefined, opts);
  }
  /** The paced redrives on queues the token administers: running first, then newest first. */
  async redriveList(opts?: CallOptions): Promise<PacedRedrive[]> {
    return (await this.#json<{ redrives: PacedRedrive[] }>("GET", "/v1/redrives", undefined, opts)).redrives;
  }
  /** Stops a paced redrive (what it moved stays moved); one already ended resolves as it is. */
  redriveStop(id: string, opts?: CallOptions): Promise<PacedRedrive> {
    return this.#json("POST", `/v1/redrives/${seg(id)}/stop`, undefined, opts);
  }
  /** Steps every running paced redrive now (the server does every 100 ms); resolves to the jobs moved. */
  async redriveTicks(opts?: CallOptions): Promise<number> {
    return (await this.#json<{ redriven: number }>("POST", "/v1/redrive-ticks", undefined, opts)).redriven;
  }

  // Consumer groups

  groupJoin(queue: string, group: string, options: { name?: string; session_timeout_ms?: number } = {}, opts?: CallOptions): Promise<MemberView> {
    return this.#json("POST", `/v1/queues/${seg(queue)}/groups/${seg(group)}/members`, options, opts);
  }
  groupHeartbeat(queue: string, group: string, memberId: string, opts?: CallOptions): Promise<MemberView> {
    return this.#json("POST", `/v1/queues/${seg(queue)}/groups/${seg(group)}/members/${seg(memberId)}/heartbeat`, undefined, opts);
  }
  async groupLeave(queue: string, group: string, memberId: string, opts?: CallOptions): Promise<void> {
    await this.#send("DELETE", `/v1/queues/${seg(queue)}/groups/${seg(group)}/members/${seg(memberId)}`, undefined, opts);
  }
  groupGet(queue: string, group: string, opts?: CallOptions): Promise<Group> {
    return this.#json("GET", `/v1/queues/${seg(queue)}/groups/${seg(group)}`, undefined, opts);
  }
  async groupList(queue: string, opts?: CallOptions): Promise<Group[]> {
    return (await this.#json<{ groups: Group[] }>("GET", `/v1/queues/${seg(queue)}/groups`, undefined, opts)).groups;
  }

  // Commits and producers

  /** Settles and enqueues all or nothing (`POST /v1/commits`). */
  commit(request: CommitRequest, opts: CallOptions = {}): Promise<CommitResult> {
    return this.#retryRateLimited(() => this.#json<CommitResult>("POST", "/v1/commits", request, opts), opts.signal);
  }
  /** Registers the producer again: a new epoch, which fences every older one. */
  producerRegister(id: string, opts?: CallOptions): Promise<ProducerState> {
    return this.#json("POST", `/v1/producers/${seg(id)}`, undefined, opts);
  }
  producerGet(id: string, opts?: CallOptions): Promise<ProducerState> {
    return this.#json("GET", `/v1/producers/${seg(id)}`, undefined, opts);
  }

  // Schedules

  async scheduleList(opts?: CallOptions): Promise<Schedule[]> {
    return (await this.#json<{ schedules: Schedule[] }>("GET", "/v1/schedules", undefined, opts)).schedules;
  }
  schedulePut(name: string, spec: ScheduleSpec, opts?: CallOptions): Promise<Schedule> {
    return this.#json("PUT", `/v1/schedules/${seg(name)}`, spec, opts);
  }
  scheduleGet(name: string, opts?: CallOptions): Promise<Schedule> {
    return this.#json("GET", `/v1/schedules/${seg(name)}`, undefined, opts);
  }
  async scheduleDelete(name: string, opts?: CallOptions): Promise<void> {
    await this.#send("DELETE", `/v1/schedules/${seg(name)}`, undefined, opts);
  }
  async schedulePause(name: string, opts?: CallOptions): Promise<void> {
    await this.#send("POST", `/v1/schedules/${seg(name)}/pause`, undefined, opts);
  }
  async scheduleResume(name: string, opts?: CallOptions): Promise<void> {
    await this.#send("POST", `/v1/schedules/${seg(name)}/resume`, undefined, opts);
  }
  /** Fires every due tick now (for tools and tests; the server fires them by itself). */
  scheduleTicks(opts?: CallOptions): Promise<ScheduleTicks> {
    return this.#json("POST", "/v1/schedule-ticks", undefined, opts);
  }

  // Idempotency store

  idempotencyBegin(key: string, options: { owner: string; ttl_ms: number; fingerprint?: string }, opts?: CallOptions): Promise<BeginOutcome> {
    return this.#json("POST", `/v1/idempotency/${seg(key)}/begin`, options, opts);
  }
  async idempotencyComplete(key: string, options: { owner: string; result: Json; retention_ms: number }, opts?: CallOptions): Promise<void> {
    await this.#send("POST", `/v1/idempotency/${seg(key)}/complete`, options, opts);
  }
  async idempotencyRelease(key: string, owner: string, opts?: CallOptions): Promise<void> {
    await this.#send("POST", `/v1/idempotency/${seg(key)}/release`, { owner }, opts);
  }

  // Operations

  /** Whether the process is up (`/healthz`). */
  async healthz(opts?: CallOptions): Promise<boolean> {
    return this.#probe("/healthz", opts);
  }
  /** Whether the store answers (`/readyz`): false on 503. */
  async readyz(opts?: CallOptions): Promise<boolean> {
    return this.#probe("/readyz", opts);
  }
  async #probe(path: string, opts?: CallOptions): Promise<boolean> {
    try {
      await this.#send("GET", path, undefined, opts);
      return true;
    } catch (error) {
      if (error instanceof Unavailable && error.status === 503) return false;
      throw error;
    }
  }
  /** The Prometheus text of `/metrics`. */
  metrics(opts?: CallOptions): Promise<string> {
    return this.#send("GET", "/metrics", undefined, opts);
  }
  /** The OpenAPI document. */
  openapi(opts?: CallOptions): Promise<Record<string, unknown>> {
    return this.#json("GET", "/openapi.json", undefined, opts);
  }
}

export { OnceqError, sleep };
