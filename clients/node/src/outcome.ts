// What a handler decided for its job, as a value (not a string): the worker settles the job
// with it. A handler that returns anything else (a result, or nothing) acks; one that throws retries.

export type Outcome =
  /** Done: ack. */
  | { readonly kind: "ack"; readonly result?: unknown }
  /** Failed this attempt: nack; after `delay_ms`, or the queue's backoff when absent. */
  | { readonly kind: "retry"; readonly error: string; readonly delay_ms?: number }
  /** Give up: dead-letter the job now, whatever attempts are left. */
  | { readonly kind: "fail"; readonly error: string }
  /** Give the lease back without it counting as an attempt, ready again after `delay_ms`. */
  | { readonly kind: "release"; readonly delay_ms?: number };

const OUTCOME = Symbol.for("onceq.outcome");

function make<T extends Outcome>(value: T): T {
  return Object.freeze(Object.assign(value, { [OUTCOME]: true }));
}

export const Outcome = {
  ack: (): Outcome => make({ kind: "ack" }),
  retry: (error: string, delayMs?: number): Outcome =>
    make(delayMs === undefined ? { kind: "retry", error } : { kind: "retry", error, delay_ms: delayMs }),
  fail: (error: string): Outcome => make({ kind: "fail", error }),
  /** Run the job again after `delayMs` without spending an attempt. */
  snooze: (delayMs = 0): Outcome => make({ kind: "release", delay_ms: delayMs }),
  /** Whether `value` was made by one of the functions above. */
  is: (value: unknown): value is Outcome => typeof value === "object" && value !== null && OUTCOME in value,
};
