// Effectively-once processing over the server's idempotency store (docs/api.md, "Idempotency
// store"), the same protocol as the Rust worker's gate (crates/onceq-worker/src/gate.rs), with
// the same keys, so Node and Rust workers of one queue see each other's records:
//
// 1. Key: prefix + queue + ":" + the job's dedup id (or "#" + its id without one; a key over 256
//    bytes takes "~" + the SHA-256 of the dedup id). Owner: worker id + "/" + lease token, one per
//    delivery.
// 2. Begin the key:
//    - completed: the effect was applied by an earlier delivery; ack without running;
//    - in progress under another owner: release the job (no attempt spent) until that claim ends;
//    - acquired: run the handler.
//    A begin that gets no answer releases the job for 1 s: the handler never runs unguarded.
// 3. After the handler: complete the key with its result (sent again while the outcome is
//    unknown and the claim surely lasts), then ack. A handler that throws, or returns an outcome
//    other than ack, releases the key so the next attempt runs the effect.

import { createHash } from "node:crypto";

import { sleep } from "./client.js";
import { Conflict, OnceqError, Unavailable } from "./errors.js";
import { Outcome } from "./outcome.js";
import type { Json, LeasedJob } from "./types.js";
import type { Handler, JobContext } from "./worker.js";

/** Longest idempotency key (docs/api.md, "Limits"). */
export const KEY_BYTES_MAX = 256;
/** Longest key prefix: with a 128-character queue name and a 64-digit digest the key still fits. */
export const KEY_PREFIX_BYTES_MAX = 56;
/** Longest claim, in ms (`ttl_ms`). */
export const CLAIM_TTL_MS_MAX = 86_400_000;
/** Longest retention of a completed key, in ms (`retention_ms`). */
export const RETENTION_MS_MAX = 2_592_000_000;
/** Default claim: 5 minutes, as the Rust worker's. Keep it above the handler's deadline. */
export const CLAIM_TTL_MS_DEFAULT = 300_000;
/** Default retention of a completed key: 7 days, as the Rust worker's. */
export const RETENTION_MS_DEFAULT = 604_800_000;
/** Default key prefix, as the Rust worker's. */
export const KEY_PREFIX_DEFAULT = "onceq:";
/** How long a job is released for when its key could not be begun for want of an answer. */
export const UNAVAILABLE_RETRY_MS = 1_000;
/** Shortest wait before a job deferred behind another owner's claim is offered again. */
export const DEFER_MS_MIN = 100;
/** Pause between tries of a complete whose outcome was unknown. */
const COMPLETE_RETRY_PAUSE_MS = 150;
/** How long before its claim may end a complete stops being sent again, at most. */
const CLAIM_MARGIN_MS_MAX = 1_000;

export interface EffectivelyOnceOptions {
  /** How long a delivery's claim lasts, 1 to 86,400,000 ms (default 300,000). */
  claimTtlMs?: number;
  /** How long a completed key and its result are kept, 1 to 2,592,000,000 ms (default 7 days). */
  retentionMs?: number;
  /** Put before every key, at most 56 bytes (default `onceq:`). */
  keyPrefix?: string;
  /** Told when a delivery found its effect already applied (a duplicate), with the recorded result. */
  onDuplicate?: (job: LeasedJob, result: Json) => void;
}

/** The key guarding a job's effect; the same derivation as the Rust worker's `idempotency_key`. */
export function idempotencyKey(prefix: string, queue: string, id: string, dedupId: string | null): string {
  if (dedupId === null) return `${prefix}${queue}:#${id}`;
  const key = `${prefix}${queue}:${dedupId}`;
  if (Buffer.byteLength(key) <= KEY_BYTES_MAX) return key;
  return `${prefix}${queue}:~${createHash("sha256").update(dedupId).digest("hex")}`;
}

function checkRange(name: string, value: number, max: number): number {
  if (!Number.isInteger(value) || value < 1 || value > max) {
    throw new RangeError(`onceq effectivelyOnce: ${name} must be an integer from 1 to ${max}, got ${value}`);
  }
  return value;
}

/**
 * Wraps `handler` so that each job's effect is applied once however often the job is
 * delivered. Its return value (JSON; `undefined` is stored as `null`) is recorded as the job's
 * result. Use it with a {@link Worker}: `worker.handle("payments", effectivelyOnce(charge))`.
 */
export function effectivelyOnce(handler: Handler, options: EffectivelyOnceOptions = {}): Handler {
  const claimTtlMs = checkRange("claimTtlMs", options.claimTtlMs ?? CLAIM_TTL_MS_DEFAULT, CLAIM_TTL_MS_MAX);
  const retentionMs = checkRange("retentionMs", options.retentionMs ?? RETENTION_MS_DEFAULT, RETENTION_MS_MAX);
  const prefix = options.keyPrefix ?? KEY_PREFIX_DEFAULT;
  if (Buffer.byteLength(prefix) > KEY_PREFIX_BYTES_MAX) {
    throw new RangeError(`onceq effectivelyOnce: keyPrefix must be at most ${KEY_PREFIX_BYTES_MAX} bytes`);
  }

  return async (job: LeasedJob, ctx: JobContext): Promise<unknown> => {
    const client = ctx.client;
    const key = idempotencyKey(prefix, job.queue, job.id, job.dedup_id);
    const owner = `${ctx.workerId}/${job.lease_token}`;
    const began = Date.now();
    let begin;
    try {
      begin = await client.idempotencyBegin(key, { owner, ttl_ms: claimTtlMs });
    } catch (error) {
      if (error instanceof Unavailable) return Outcome.snooze(UNAVAILABLE_RETRY_MS);
      throw new Error(`the idempotency store refused the job's key: ${(error as Error).message}`);
    }
    if (begin.state === "completed") {
      options.onDuplicate?.(job, begin.result);
      return Outcome.ack();
    }
    if (begin.state === "in_progress") {
      return Outcome.snooze(Math.max(DEFER_MS_MIN, Date.parse(begin.until) - Date.now()));
    }

    let value: unknown;
    try {
      value = await handler(job, ctx);
    } catch (error) {
      await releaseKey();
      throw error;
    }
    if (Outcome.is(value) && value.kind !== "ack") {
      await releaseKey();
      return value;
    }
    // The effect happened: record it even if the lease was lost meanwhile, so the redelivery
    // that the lost lease causes finds it.
    const result = (Outcome.is(value) ? null : (value ?? null)) as Json;
    await complete(result);
    return Outcome.ack();

    async function releaseKey(): Promise<void> {
      try {
        await client.idempotencyRelease(key, owner);
      } catch {
        // The claim expires by itself after claimTtlMs.
      }
    }

    async function complete(result: Json): Promise<void> {
      const deadline = began + claimTtlMs - Math.min(CLAIM_MARGIN_MS_MAX, claimTtlMs / 4);
      let unknownBefore = false;
      // Ends: each pass either returns, throws, or sleeps towards `deadline`, past which it throws.
      for (;;) {
        try {
          await client.idempotencyComplete(key, { owner, result, retention_ms: retentionMs });
          return;
        } catch (error) {
          if (error instanceof Unavailable && Date.now() < deadline) {
            unknownBefore = true;
            await sleep(COMPLETE_RETRY_PAUSE_MS);
            continue;
          }
          if (error instanceof Conflict && unknownBefore) {
            // An earlier try may have landed: a begin by the same owner tells.
            let again;
            try {
              again = await client.idempotencyBegin(key, { owner, ttl_ms: claimTtlMs });
            } catch {
              throw error;
            }
            if (again.state === "completed") return;
            if (again.state === "acquired") {
              unknownBefore = false;
              continue;
            }
            throw new OnceqError("conflict", `idempotency key ${key} was taken by ${again.owner} before the effect was recorded`, 409);
          }
          throw error;
        }
      }
    }
  };
}
