// The worker: leases jobs of each handled queue in batches, runs their handlers with bounded
// concurrency, keeps their leases alive with batched extends, and settles them with batched
// acks, nacks, fails and releases.
//
// Per queue, one lease loop keeps up to `concurrency + prefetch` jobs held: `concurrency`
// handlers run, and up to `prefetch` leased jobs wait to start. One heartbeat timer extends
// every held job's lease each `heartbeatIntervalMs`; a job whose extend is refused (`lease_lost`,
// `not_found`) has lost its lease, and its handler's signal aborts (with `job_cancelled` the
// signal aborts too, and the lease is given back when the handler returns); an item
// answered otherwise (`unavailable`) is a beat that got no answer. Settles of every queue go through one batcher, which
// sends what gathered within `settleBatchDelayMs` as one request per kind. `stop()` (and SIGTERM
// under `run({ signals: true })`) stops leasing, releases the jobs that did not start, waits
// `shutdownGraceMs` for running handlers, and sends the last settles.

import { randomBytes } from "node:crypto";

import { BATCH_ITEMS_MAX, Client, sleep } from "./client.js";
import { JobCancelled, LeaseLost, OnceqError } from "./errors.js";
import { Outcome } from "./outcome.js";
import type { LeasedJob, SettleResult } from "./types.js";

/** Most jobs one lease asks for (docs/api.md, "Limits"). */
export const LEASE_JOBS_MAX = 1000;
/** Longest long poll of a lease, in ms (docs/api.md: `wait_ms` 0 to 20,000). */
export const LEASE_WAIT_MS_MAX = 20_000;
/** Longest lease, in ms (`visibility_timeout_ms`). */
export const VISIBILITY_TIMEOUT_MS_MAX = 43_200_000;
/** Tries of one batch settle that got no answer, before the worker reports it and leaves the jobs to expire. */
export const SETTLE_TRIES_MAX = 3;
/** Longest pause after a failed lease before the next, in ms. */
export const LEASE_ERROR_PAUSE_MS_MAX = 5_000;
/** Attempt error text the server keeps (longer text is cut there too). */
const ERROR_TEXT_BYTES_MAX = 4096;

/** What a handler is given besides its job. */
export interface JobContext {
  /** Aborts when the lease is lost (a refused heartbeat), the job's deadline passes, or shutdown's grace ends. */
  readonly signal: AbortSignal;
  /** The client the worker speaks through. */
  readonly client: Client;
  /** This worker's id (unique per worker instance). */
  readonly workerId: string;
}

/** A job's handler. It returns a result (acked), an {@link Outcome}, or throws (retried with the queue's backoff). */
export type Handler = (job: LeasedJob, ctx: JobContext) => unknown | Promise<unknown>;

export interface WorkerOptions {
  /** Handlers running at once, per queue (default 10). */
  concurrency?: number;
  /** Most jobs one lease asks for, 1 to 1000 (default: `concurrency`, at most 1000). */
  leaseBatchMax?: number;
  /** Leased jobs held waiting to start, per queue (default: `leaseBatchMax`). Shutdown releases them. */
  prefetch?: number;
  /** Lease length in ms, 1 to 43,200,000 (default 30,000). Heartbeats renew it to this from each beat. */
  visibilityTimeoutMs?: number;
  /** How often held leases are extended, in ms, below `visibilityTimeoutMs` (default: a third of it). */
  heartbeatIntervalMs?: number;
  /** Per-job deadline in ms: past it the handler's signal aborts and the job is retried (default: none). */
  jobTimeoutMs?: number;
  /** Long poll of each lease, 0 to 20,000 ms (default 5,000). */
  leaseWaitMs?: number;
  /** How long settles gather before they are sent as one batch, in ms (default 2). */
  settleBatchDelayMs?: number;
  /** How long `stop()` waits for running handlers before aborting their signals, in ms (default 30,000). */
  shutdownGraceMs?: number;
  /** This worker's id (default: `node-` and 16 random hex digits). */
  workerId?: string;
  /** Told of every error the worker cannot hand to a caller (a failed lease, a refused settle). Default: console.error. */
  onError?: (error: unknown, job?: LeasedJob) => void;
}

/** The item error codes of a heartbeat that mean the handler must stop: the lease is gone, or the job was cancelled (any other is no answer). */
export const LEASE_GONE_CODES: readonly string[] = ["lease_lost", "not_found"];

/** Aborts a handler whose job ran past its deadline. */
export class DeadlineExceeded extends Error {
  constructor(ms: number) {
    super(`the job ran past its deadline of ${ms} ms`);
    this.name = "DeadlineExceeded";
  }
}

/** Aborts a handler still running when shutdown's grace ended. */
export class ShuttingDown extends Error {
  constructor() {
    super("the worker is shutting down and its grace period ended");
    this.name = "ShuttingDown";
  }
}

/** A leased job while the worker holds it. */
interface Held {
  job: LeasedJob;
  controller: AbortController;
  started: boolean;
  /** The lease was refused by a heartbeat: the job is no longer this worker's to settle. */
  lost: boolean;
  /** An operator cancelled the job (a heartbeat answered `job_cancelled`): the lease is still ours. */
  cancelled?: boolean;
}

type SettleKind = "acks" | "nacks" | "fails" | "releases";
interface Pending {
  item: Record<string, unknown>;
  resolve: (result: SettleResult) => void;
}

/** Gathers settles of any queue and sends each kind as one batch request. */
class Settler {
  readonly #client: Client;
  readonly #delayMs: number;
  readonly #onError: (error: unknown) => void;
  #pending: Record<SettleKind, Pending[]> = { acks: [], nacks: [], fails: [], releases: [] };
  #timer: NodeJS.Timeout | undefined;
  #inFlight = new Set<Promise<void>>();

  constructor(client: Client, delayMs: number, onError: (error: unknown) => void) {
    this.#client = client;
    this.#delayMs = delayMs;
    this.#onError = onError;
  }

  settle(kind: SettleKind, item: Record<string, unknown>): Promise<SettleResult> {
    return new Promise((resolve) => {
      const list = this.#pending[kind];
      list.push({ item, resolve });
      if (list.length >= BATCH_ITEMS_MAX) this.#sendKind(kind);
      else this.#timer ??= setTimeout(() => this.#sendAll(), this.#delayMs);
    });
  }

  #sendAll(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const kind of Object.keys(this.#pending) as SettleKind[]) this.#sendKind(kind);
  }

  #sendKind(kind: SettleKind): void {
    const batch = this.#pending[kind];
    if (batch.length === 0) return;
    this.#pending[kind] = [];
    const sent = this.#send(kind, batch).finally(() => this.#inFlight.delete(sent));
    this.#inFlight.add(sent);
  }

  async #send(kind: SettleKind, batch: Pending[]): Promise<void> {
    const items = batch.map((p) => p.item);
    let lastError: unknown;
    for (let tries = 1; tries <= SETTLE_TRIES_MAX; tries++) {
      try {
        const results = await this.#call(kind, items);
        results.forEach((result, i) => batch[i]?.resolve(result));
        return;
      } catch (error) {
        lastError = error;
        // Only an unanswered request is worth sending again: a 4xx would answer the same.
        if (!(error instanceof OnceqError) || (error.status !== 0 && error.status < 500)) break;
        await sleep(100 * tries);
      }
    }
    this.#onError(lastError);
    const message = lastError instanceof Error ? lastError.message : String(lastError);
    for (const p of batch) p.resolve({ id: String(p.item.id), ok: false, error: { code: "unsent", message } });
  }

  #call(kind: SettleKind, items: Record<string, unknown>[]): Promise<SettleResult[]> {
    switch (kind) {
      case "acks":
        return this.#client.acks(items as never);
      case "nacks":
        return this.#client.nacks(items as never);
      case "fails":
        return this.#client.fails(items as never);
      case "releases":
        return this.#client.releases(items as never);
    }
  }

  /** Sends what is gathered and waits for every batch in flight. */
  async flush(): Promise<void> {
    this.#sendAll();
    while (this.#inFlight.size > 0) await Promise.allSettled([...this.#inFlight]);
  }
}

function positiveInt(name: string, value: number | undefined, fallback: number, max = Number.MAX_SAFE_INTEGER, min = 1): number {
  const v = value ?? fallback;
  if (!Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`onceq worker: ${name} must be an integer from ${min} to ${max}, got ${String(value)}`);
  }
  return v;
}

function errorText(error: unknown): string {
  const text = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
  return Buffer.byteLength(text) > ERROR_TEXT_BYTES_MAX ? text.slice(0, ERROR_TEXT_BYTES_MAX / 4) + "…" : text;
}

/** One handled queue's state. */
class QueueRunner {
  readonly buffer: Held[] = [];
  running = 0;
  #wake: (() => void) | undefined;

  constructor(readonly queue: string, readonly handler: Handler) {}

  /** Resolves when a slot frees or the worker stops. */
  waitForSlot(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      if (signal.aborted) return resolve();
      this.#wake = resolve;
      signal.addEventListener("abort", () => resolve(), { once: true });
    });
  }

  wake(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}

/** Runs handlers for the queues given to {@link Worker.handle}. */
export class Worker {
  readonly client: Client;
  readonly workerId: string;
  readonly #concurrency: number;
  readonly #leaseBatchMax: number;
  readonly #prefetch: number;
  readonly #visibilityTimeoutMs: number;
  readonly #heartbeatIntervalMs: number;
  readonly #jobTimeoutMs: number | undefined;
  readonly #leaseWaitMs: number;
  readonly #shutdownGraceMs: number;
  readonly #onError: (error: unknown, job?: LeasedJob) => void;
  readonly #settler: Settler;
  readonly #runners = new Map<string, QueueRunner>();
  /** Every job this worker holds, by id: waiting to start or running. */
  readonly #held = new Map<string, Held>();
  /** Stops the lease loops (and their long polls). */
  readonly #stopLeasing = new AbortController();
  #loops: Promise<void>[] = [];
  #heartbeat: NodeJS.Timeout | undefined;
  #handlersDone = new Set<Promise<void>>();
  #started = false;
  #stopped: Promise<void> | undefined;
  #removeSignals: (() => void) | undefined;

  constructor(client: Client, options: WorkerOptions = {}) {
    this.client = client;
    this.workerId = options.workerId ?? `node-${randomBytes(8).toString("hex")}`;
    this.#concurrency = positiveInt("concurrency", options.concurrency, 10);
    this.#leaseBatchMax = positiveInt("leaseBatchMax", options.leaseBatchMax, Math.min(this.#concurrency, LEASE_JOBS_MAX), LEASE_JOBS_MAX);
    this.#prefetch = positiveInt("prefetch", options.prefetch, this.#leaseBatchMax, Number.MAX_SAFE_INTEGER, 0);
    this.#visibilityTimeoutMs = positiveInt("visibilityTimeoutMs", options.visibilityTimeoutMs, 30_000, VISIBILITY_TIMEOUT_MS_MAX);
    this.#heartbeatIntervalMs = positiveInt(
      "heartbeatIntervalMs",
      options.heartbeatIntervalMs,
      Math.max(1, Math.floor(this.#visibilityTimeoutMs / 3)),
    );
    if (this.#heartbeatIntervalMs >= this.#visibilityTimeoutMs) {
      throw new RangeError("onceq worker: heartbeatIntervalMs must be below visibilityTimeoutMs, or leases expire between heartbeats");
    }
    this.#jobTimeoutMs = options.jobTimeoutMs === undefined ? undefined : positiveInt("jobTimeoutMs", options.jobTimeoutMs, 0);
    this.#leaseWaitMs = positiveInt("leaseWaitMs", options.leaseWaitMs, 5_000, LEASE_WAIT_MS_MAX, 0);
    this.#shutdownGraceMs = positiveInt("shutdownGraceMs", options.shutdownGraceMs, 30_000, Number.MAX_SAFE_INTEGER, 0);
    this.#onError = options.onError ?? ((error, job) => console.error(`onceq worker${job ? ` (job ${job.id})` : ""}:`, error));
    const delay = positiveInt("settleBatchDelayMs", options.settleBatchDelayMs, 2, 60_000, 0);
    this.#settler = new Settler(client, delay, (error) => this.#onError(error));
  }

  /** Runs `handler` for the jobs of `queue`. Call before {@link start}; one handler per queue. */
  handle(queue: string, handler: Handler): this {
    if (this.#started) throw new Error("onceq worker: handle() must be called before start()");
    if (this.#runners.has(queue)) throw new Error(`onceq worker: queue ${queue} already has a handler`);
    this.#runners.set(queue, new QueueRunner(queue, handler));
    return this;
  }

  /** Starts leasing. Returns at once; {@link stop} ends it. */
  start(): void {
    if (this.#started) return;
    if (this.#runners.size === 0) throw new Error("onceq worker: no queue has a handler; call handle() first");
    this.#started = true;
    this.#loops = [...this.#runners.values()].map((runner) => this.#leaseLoop(runner));
    this.#heartbeat = setInterval(() => void this.#extendHeld(), this.#heartbeatIntervalMs);
  }

  /**
   * Starts, and resolves once the worker has stopped. With `signals: true`, SIGTERM and SIGINT
   * stop it gracefully.
   */
  async run(options: { signals?: boolean } = {}): Promise<void> {
    this.start();
    if (options.signals) {
      const onSignal = () => void this.stop();
      process.once("SIGTERM", onSignal);
      process.once("SIGINT", onSignal);
      this.#removeSignals = () => {
        process.off("SIGTERM", onSignal);
        process.off("SIGINT", onSignal);
      };
    }
    const stopping = this.#stopLeasing.signal;
    if (!stopping.aborted) await new Promise<void>((resolve) => stopping.addEventListener("abort", () => resolve(), { once: true }));
    await this.#stopped;
  }

  /** Jobs held now: running, or leased and waiting to start. */
  get heldCount(): number {
    return this.#held.size;
  }

  /**
   * Stops gracefully: no new leases; jobs leased but not started are released (no attempt
   * spent); running handlers get `shutdownGraceMs` to finish, then their signals abort; the
   * last settles are sent. Safe to call twice, or before start.
   */
  stop(): Promise<void> {
    this.#stopped ??= this.#shutdown();
    return this.#stopped;
  }

  async #shutdown(): Promise<void> {
    this.#stopLeasing.abort(new ShuttingDown());
    for (const runner of this.#runners.values()) runner.wake();
    await Promise.allSettled(this.#loops);
    const unstarted = [...this.#runners.values()].flatMap((runner) => runner.buffer.splice(0));
    for (const held of unstarted) this.#held.delete(held.job.id);
    const releases = unstarted.map((held) =>
      this.#settler.settle("releases", { id: held.job.id, lease_token: held.job.lease_token }).then((result) => {
        if (!result.ok) this.#onError(new Error(`release of job ${result.id} refused: ${result.error?.message}`), held.job);
      }),
    );
    await this.#settler.flush();
    await Promise.all(releases);
    if (this.#handlersDone.size > 0) {
      // The timers are cancelled once the handlers are done, so they keep no process alive.
      const timers = new AbortController();
      const done = Promise.allSettled([...this.#handlersDone]).then(() => "done");
      const grace = sleep(this.#shutdownGraceMs, timers.signal).then(() => "grace", () => "done");
      if ((await Promise.race([grace, done])) === "grace") {
        for (const held of this.#held.values()) held.controller.abort(new ShuttingDown());
        // The handlers were told; their jobs expire if they still do not return.
        await Promise.race([sleep(1_000, timers.signal).catch(() => undefined), done]);
      }
      timers.abort();
    }
    clearInterval(this.#heartbeat);
    await this.#settler.flush();
    this.#removeSignals?.();
  }

  async #leaseLoop(runner: QueueRunner): Promise<void> {
    const signal = this.#stopLeasing.signal;
    let errorPauseMs = 100;
    // Ends: when stop() aborts `signal`, which also ends a long poll in flight.
    while (!signal.aborted) {
      const capacity = this.#concurrency + this.#prefetch - runner.running - runner.buffer.length;
      if (capacity <= 0) {
        await runner.waitForSlot(signal);
        continue;
      }
      let jobs: LeasedJob[];
      try {
        const options = {
          max_jobs: Math.min(this.#leaseBatchMax, capacity),
          wait_ms: this.#leaseWaitMs,
          visibility_timeout_ms: this.#visibilityTimeoutMs,
        };
        jobs = await this.client.lease(runner.queue, options, { signal });
        errorPauseMs = 100;
      } catch (error) {
        if (signal.aborted) break;
        this.#onError(error);
        await sleep(errorPauseMs, signal).catch(() => undefined);
        errorPauseMs = Math.min(LEASE_ERROR_PAUSE_MS_MAX, errorPauseMs * 2);
        continue;
      }
      for (const job of jobs) {
        const held: Held = { job, controller: new AbortController(), started: false, lost: false };
        this.#held.set(job.id, held);
        runner.buffer.push(held);
      }
      this.#pump(runner);
    }
  }

  /** Starts waiting jobs while slots are free. */
  #pump(runner: QueueRunner): void {
    while (runner.running < this.#concurrency && runner.buffer.length > 0 && !this.#stopLeasing.signal.aborted) {
      const held = runner.buffer.shift() as Held;
      const done = this.#runJob(runner, held);
      this.#handlersDone.add(done);
      void done.finally(() => this.#handlersDone.delete(done));
    }
  }

  async #runJob(runner: QueueRunner, held: Held): Promise<void> {
    runner.running++;
    held.started = true;
    const { job, controller } = held;
    const ctx: JobContext = { signal: controller.signal, client: this.client, workerId: this.workerId };
    let timer: NodeJS.Timeout | undefined;
    let handlerReturned!: () => void;
    const handlerEnded = new Promise<void>((resolve) => (handlerReturned = resolve));
    let outcome: Outcome;
    try {
      const handling = Promise.resolve().then(() => runner.handler(job, ctx));
      void handling.then(handlerReturned, handlerReturned);
      const deadline =
        this.#jobTimeoutMs === undefined
          ? undefined
          : new Promise<never>((_, reject) => {
              const ms = this.#jobTimeoutMs as number;
              timer = setTimeout(() => {
                const error = new DeadlineExceeded(ms);
                controller.abort(error);
                reject(error);
              }, ms);
            });
      const value = await (deadline ? Promise.race([handling, deadline]) : handling);
      outcome = Outcome.is(value) ? value : Outcome.ack();
    } catch (error) {
      outcome = Outcome.retry(errorText(error));
    } finally {
      clearTimeout(timer);
    }
    this.#held.delete(job.id);
    if (held.lost) {
      this.#onError(new LeaseLost("lease_lost", `job ${job.id}: the lease was lost while its handler ran; not settled`, 409), job);
    } else if (held.cancelled && outcome.kind === "retry") {
      // Stopped by the cancel: give the lease back, which ends the job cancelled at once (an ack
      // of a handler that finished anyway still settles it, as the server defines).
      void this.#settle(job, Outcome.snooze());
    } else {
      void this.#settle(job, outcome);
    }
    // The slot frees when the handler returns, even past its deadline, so `concurrency` holds.
    await handlerEnded;
    runner.running--;
    runner.wake();
    this.#pump(runner);
  }

  async #settle(job: LeasedJob, outcome: Outcome): Promise<void> {
    const base = { id: job.id, lease_token: job.lease_token };
    let result: SettleResult;
    switch (outcome.kind) {
      case "ack":
        result = await this.#settler.settle("acks", base);
        break;
      case "retry":
        result = await this.#settler.settle("nacks", { ...base, error: outcome.error, ...(outcome.delay_ms === undefined ? {} : { delay_ms: outcome.delay_ms }) });
        break;
      case "fail":
        result = await this.#settler.settle("fails", { ...base, error: outcome.error });
        break;
      case "release":
        result = await this.#settler.settle("releases", { ...base, ...(outcome.delay_ms === undefined ? {} : { delay_ms: outcome.delay_ms }) });
        break;
    }
    if (!result.ok && result.error?.code !== "unsent") {
      this.#onError(new Error(`${outcome.kind} of job ${job.id} refused: ${result.error?.code}: ${result.error?.message}`), job);
    }
  }

  /** Extends every held lease; a refused one (`lease_lost`, `not_found`) aborts its handler (or drops its unstarted job). */
  async #extendHeld(): Promise<void> {
    const held = [...this.#held.values()];
    for (let i = 0; i < held.length; i += BATCH_ITEMS_MAX) {
      const chunk = held.slice(i, i + BATCH_ITEMS_MAX);
      const visibility = this.#visibilityTimeoutMs;
      let results: SettleResult[];
      try {
        results = await this.client.extends(
          chunk.map((h) => ({ id: h.job.id, lease_token: h.job.lease_token, visibility_timeout_ms: visibility })),
        );
      } catch (error) {
        this.#onError(error);
        continue;
      }
      results.forEach((result, j) => {
        const h = chunk[j];
        if (!h || result.ok || !this.#held.has(h.job.id)) return;
        if (result.error?.code === "job_cancelled") {
          // An operator cancelled the job; the lease is still this worker's (a refused extend
          // changes nothing). Abort the handler; its lease goes back when it returns.
          if (h.cancelled) return;
          h.cancelled = true;
          h.controller.abort(new JobCancelled("job_cancelled", result.error.message ?? "job cancelled", 409));
          if (!h.started) {
            this.#held.delete(h.job.id);
            const runner = this.#runners.get(h.job.queue);
            const at = runner?.buffer.indexOf(h) ?? -1;
            if (runner && at >= 0) runner.buffer.splice(at, 1);
            void this.#settle(h.job, Outcome.snooze());
          }
          return;
        }
        // Only a definite refusal means the lease is gone; another code (`unavailable`) is a
        // heartbeat that got no answer: the handler keeps running, the next beat tries again.
        if (!LEASE_GONE_CODES.includes(result.error?.code ?? "lease_lost")) {
          this.#onError(new Error(`heartbeat of job ${h.job.id} got no definite answer: ${result.error?.code}`), h.job);
          return;
        }
        h.lost = true;
        const lost = new LeaseLost(result.error?.code ?? "lease_lost", result.error?.message ?? "lease lost", 409);
        h.controller.abort(lost);
        if (!h.started) {
          this.#held.delete(h.job.id);
          const runner = this.#runners.get(h.job.queue);
          const at = runner?.buffer.indexOf(h) ?? -1;
          if (runner && at >= 0) runner.buffer.splice(at, 1);
        }
      });
    }
  }
}
