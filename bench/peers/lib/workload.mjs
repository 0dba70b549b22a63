// The workload every system runs, the same for each: N no-op jobs of 64-byte payloads, enqueued
// in batches of 100 by 4 concurrent producers while the consumers run, each job completed once.
// A payload is JSON text of exactly 64 bytes that names its job's number, so that the consumer
// side can tell every job was completed once (a bitmap of N) without trusting the system's counts.

/** Jobs per enqueue call, and per lease / fetch / prefetch window on the consumer side. */
export const BATCH = 100;
/** Concurrent producer loops, as in `onceq bench`'s batched end-to-end scenario. */
export const PRODUCERS = 4;
/** Bytes of every job's payload. */
export const PAYLOAD_BYTES = 64;

/** The 64-byte JSON text of job `n`: `{"n":123,"pad":"xxx…"}`. */
export function payloadText(n) {
  const head = `{"n":${n},"pad":"`;
  const tail = `"}`;
  const pad = PAYLOAD_BYTES - head.length - tail.length;
  if (pad < 0) throw new Error(`job number ${n} does not fit a ${PAYLOAD_BYTES}-byte payload`);
  return head + "x".repeat(pad) + tail;
}

/** The payload of job `n` as an object (for systems that take JSON values): it serializes to 64 bytes. */
export function payloadObject(n) {
  return JSON.parse(payloadText(n));
}

/** Job number of a payload given as an object, text or bytes. */
export function jobNumber(payload) {
  const value = typeof payload === "string" || payload instanceof Uint8Array ? JSON.parse(Buffer.from(payload).toString("utf8")) : payload;
  if (!value || !Number.isInteger(value.n)) throw new Error(`a payload without a job number: ${JSON.stringify(value)}`);
  return value.n;
}

/**
 * Runs `PRODUCERS` loops that claim batches of job numbers until `jobs` are enqueued; `enqueue`
 * gets the job numbers of one batch and the loop's index (0 to PRODUCERS - 1), and must resolve
 * once the system has confirmed all of them.
 * Resolves to the monotonic time (ns, bigint) just before the first enqueue.
 */
export async function produce(jobs, enqueue) {
  let next = 0;
  const started = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: PRODUCERS }, async (_, loop) => {
      while (next < jobs) {
        const first = next;
        const size = Math.min(BATCH, jobs - first);
        next += size;
        await enqueue(
          Array.from({ length: size }, (_, i) => first + i),
          loop,
        );
      }
    }),
  );
  return started;
}

/** Which of the run's jobs the consumer side has completed, and how many twice. */
export class Completions {
  constructor(jobs) {
    this.jobs = jobs;
    this.bits = new Uint8Array(jobs);
    this.count = 0;
    this.duplicates = 0;
    this.unexpected = 0;
  }

  /** Records job `n` as completed (its completion confirmed by the system where it confirms any). */
  record(n) {
    if (!Number.isInteger(n) || n < 0 || n >= this.jobs) {
      this.unexpected++;
      return;
    }
    if (this.bits[n]) {
      this.duplicates++;
      return;
    }
    this.bits[n] = 1;
    this.count++;
  }

  get done() {
    return this.count === this.jobs;
  }

  summary() {
    return { completed: this.count, duplicates: this.duplicates, unexpected: this.unexpected };
  }
}
