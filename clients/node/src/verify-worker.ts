// `node dist/verify-worker.js`: the worker that `onceq verify --worker-cmd` runs.
//
// It speaks the protocol of the repository's docs/verify.md: it reads its settings from the
// environment verify gives each process, runs this package's `Worker` on ONCEQ_URL (verify's
// recording API) and, in effectively_once mode, wraps its handler in `effectivelyOnce`. The
// handler's effect is `POST $ONCEQ_VERIFY_EFFECT_URL {"lease_token": ...}`: verify records it and
// answers what the delivery does next, where the fault schedule says it crashes:
//
// - `continue`: return; the wrapper completes the key and the worker acks;
// - `crash`: exit now (the effect was not recorded);
// - `crash_before_complete`: exit when the job's key is about to be completed;
// - `crash_before_ack`: exit once the key is completed (without a key: when the handler
//   returns), before the ack.
//
// A crash is `process.exit(ONCEQ_VERIFY_CRASH_EXIT_CODE)` at once: no settle goes out after
// it. Before it exits, the process waits until no other delivery of it is between its recorded
// effect and its completed key (that window is the `crash-before-complete` fault, which verify
// injects on its own), and lets no new effect start meanwhile.
//
// ONCEQ_VERIFY_BROKEN_GATE=1 runs the handler without `effectivelyOnce`, so that verify must
// report the duplicate effects the crashes then cause (onceq's own tests use it).

import { Client } from "./client.js";
import { effectivelyOnce, idempotencyKey, KEY_PREFIX_DEFAULT } from "./effectively-once.js";
import type { Json, LeasedJob } from "./types.js";
import { Worker, type Handler } from "./worker.js";

/** How long the effect call may take: verify holds a stalled delivery's reply past its lease. */
const EFFECT_TIMEOUT_MS = 120_000;
/** How often a crashing process looks whether the other deliveries' windows closed. */
const WINDOW_POLL_MS = 5;
/** Longest wait of a crash for the other deliveries' windows: past it the process exits with
 * status 1, which stops the run, rather than crash inside a window. */
const WINDOW_WAIT_MS_MAX = 60_000;

type Action = "continue" | "crash" | "crash_before_complete" | "crash_before_ack";

function env(name: string): string {
  const value = process.env[name];
  if (value === undefined || value === "") {
    console.error(`onceq verify-worker: ${name} is not set; this program is run by \`onceq verify --worker-cmd\``);
    process.exit(2);
  }
  return value;
}

function envInt(name: string): number {
  const text = env(name);
  const value = Number(text);
  if (!Number.isInteger(value)) {
    console.error(`onceq verify-worker: ${name}=${JSON.stringify(text)} is not an integer`);
    process.exit(2);
  }
  return value;
}

const never = (): Promise<never> => new Promise<never>(() => undefined);
const pause = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The deliveries between their recorded effect and their completed key, and their crashes. */
class Crashes {
  /** Keys whose effect call was sent and whose key is not completed yet. */
  readonly open = new Set<string>();
  /** Keys told to crash before their complete: their window is the fault itself. */
  readonly exempt = new Set<string>();
  /** What the rest of each open delivery does, by key. */
  readonly actions = new Map<string, Action>();
  crashing = false;

  constructor(readonly exitCode: number) {}

  /** Opens the window of `key` before its effect; never resolves once a crash began. */
  async enter(key: string): Promise<void> {
    if (this.crashing) await never();
    this.open.add(key);
  }

  close(key: string): void {
    this.open.delete(key);
    this.actions.delete(key);
  }

  /** Exits the process once no other delivery is between its effect and its complete. */
  async crash(): Promise<never> {
    if (this.crashing) return never();
    this.crashing = true;
    const deadline = Date.now() + WINDOW_WAIT_MS_MAX;
    for (;;) {
      const waiting = [...this.open].filter((key) => !this.exempt.has(key));
      if (waiting.length === 0) process.exit(this.exitCode);
      if (Date.now() > deadline) {
        console.error(`onceq verify-worker: a crash waited ${WINDOW_WAIT_MS_MAX} ms for deliveries between their effect and their complete: ${waiting.slice(0, 5).join(", ")}`);
        process.exit(1);
      }
      await pause(WINDOW_POLL_MS);
    }
  }
}

/** The worker's client, with the crashes that come at the idempotency key's completion. */
class VerifyClient extends Client {
  constructor(url: string, readonly crashes: Crashes) {
    super(url);
  }

  override async idempotencyComplete(
    key: string,
    options: { owner: string; result: Json; retention_ms: number },
    opts?: Parameters<Client["idempotencyComplete"]>[2],
  ): Promise<void> {
    const action = this.crashes.actions.get(key);
    if (action === "crash_before_complete") await this.crashes.crash();
    try {
      await super.idempotencyComplete(key, options, opts);
    } finally {
      this.crashes.close(key);
    }
    if (action === "crash_before_ack") await this.crashes.crash();
  }
}

async function main(): Promise<void> {
  const url = env("ONCEQ_URL");
  const effectUrl = env("ONCEQ_VERIFY_EFFECT_URL");
  const queue = env("ONCEQ_VERIFY_QUEUE");
  const mode = env("ONCEQ_VERIFY_MODE");
  const visibilityTimeoutMs = envInt("ONCEQ_VERIFY_VISIBILITY_TIMEOUT_MS");
  const claimTtlMs = envInt("ONCEQ_VERIFY_CLAIM_TTL_MS");
  const concurrency = envInt("ONCEQ_VERIFY_CONCURRENCY");
  const prefetch = envInt("ONCEQ_VERIFY_PREFETCH");
  const processNumber = env("ONCEQ_VERIFY_PROCESS");
  const crashes = new Crashes(envInt("ONCEQ_VERIFY_CRASH_EXIT_CODE"));
  const guarded = mode === "effectively_once" && process.env.ONCEQ_VERIFY_BROKEN_GATE !== "1";

  const client = new VerifyClient(url, crashes);
  const worker = new Worker(client, {
    concurrency,
    prefetch,
    leaseBatchMax: Math.min(1000, concurrency),
    visibilityTimeoutMs,
    leaseWaitMs: 500,
    shutdownGraceMs: 1_000,
    workerId: `verify-node-${processNumber}-${process.pid}`,
    // Refused acks of stalled leases and withheld heartbeats are the faults at work.
    onError: () => undefined,
  });

  const handle: Handler = async (job: LeasedJob) => {
    const key = idempotencyKey(KEY_PREFIX_DEFAULT, job.queue, job.id, job.dedup_id);
    await crashes.enter(key);
    let action: Action;
    try {
      const reply = await fetch(effectUrl, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ lease_token: job.lease_token }),
        signal: AbortSignal.timeout(EFFECT_TIMEOUT_MS),
      });
      if (!reply.ok) throw new Error(`${reply.status}: ${await reply.text()}`);
      action = ((await reply.json()) as { action: Action }).action;
    } catch (error) {
      // Whether the effect landed is unknown: stop loudly (verify stops the run with this).
      console.error(`onceq verify-worker: the effect of job ${job.id} got no answer from verify:`, error);
      process.exit(1);
    }
    if (action === "crash") {
      crashes.close(key);
      return crashes.crash();
    }
    if (!guarded) {
      // No key to complete: the window closes with the handler.
      crashes.close(key);
      if (action === "crash_before_ack" || action === "crash_before_complete") return crashes.crash();
      return null;
    }
    if (action === "crash_before_complete") crashes.exempt.add(key);
    crashes.actions.set(key, action);
    return 1;
  };

  worker.handle(queue, guarded ? effectivelyOnce(handle, { claimTtlMs }) : handle);
  await worker.run({ signals: true });
}

main().catch((error) => {
  console.error("onceq verify-worker:", error);
  process.exit(1);
});
