// The worker against a real `onceq serve`: batched leases and settles, bounded concurrency,
// retry with the queue's backoff, the per-job deadline, heartbeats that keep a lease and abort a
// handler whose lease is refused, and a graceful stop (in-process and on SIGTERM) that releases
// the jobs that did not start.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";

import { Client, Outcome, Worker } from "../dist/index.js";
import { eventually, queueName, startServer } from "./server.mjs";

let server;
let client;
before(async () => {
  server = await startServer();
  client = new Client(server.url);
});
after(() => server.close());

const quiet = { onError: () => {} };

test("runs every job once, never more than `concurrency` at a time, and acks them", async () => {
  const q = queueName();
  const n = 300;
  await client.enqueue(q, Array.from({ length: n }, (_, i) => ({ payload: i })));
  const seen = new Map();
  let running = 0;
  let peak = 0;
  const worker = new Worker(client, { concurrency: 8, leaseBatchMax: 50, leaseWaitMs: 200, ...quiet });
  worker.handle(q, async (job) => {
    running++;
    peak = Math.max(peak, running);
    await new Promise((r) => setTimeout(r, 1));
    seen.set(job.payload, (seen.get(job.payload) ?? 0) + 1);
    running--;
  });
  worker.start();
  await eventually(async () => (await client.queueGet(q)).stats.leased === 0 && seen.size === n && (await client.queueGet(q)).stats.ready === 0, 20_000, "every job acked");
  await worker.stop();
  assert.equal(peak, 8);
  assert.ok([...seen.values()].every((count) => count === 1));
  const stats = (await client.queueGet(q)).stats;
  assert.deepEqual([stats.ready, stats.leased, stats.scheduled, stats.dead], [0, 0, 0, 0]);
});

test("a throw is a nack with the queue's backoff; an Outcome.fail dead-letters", async () => {
  const q = queueName();
  await client.queuePut(q, { backoff: { initial_ms: 60_000, jitter: "none" } });
  const [{ id: throws }, { id: fails }] = await client.enqueue(q, [{ payload: "throw" }, { payload: "fail" }]);
  const worker = new Worker(client, { leaseWaitMs: 100, ...quiet });
  worker.handle(q, (job) => {
    if (job.payload === "throw") throw new Error("smtp timeout");
    return Outcome.fail("bad address");
  });
  worker.start();
  await eventually(async () => (await client.queueGet(q)).stats.dead === 1 && (await client.jobGet(throws)).state === "scheduled", 10_000, "both settled");
  await worker.stop();
  const retried = await client.jobGet(throws);
  assert.equal(retried.attempt, 1);
  assert.equal(retried.errors[0].error, "Error: smtp timeout");
  const delay = Date.parse(retried.run_at) - Date.parse(retried.errors[0].at);
  assert.ok(delay >= 59_000 && delay <= 61_000, `backoff of ${delay} ms`);
  const dead = await client.jobGet(fails);
  assert.deepEqual([dead.state, dead.errors[0].error], ["dead", "bad address"]);
});

test("past its deadline a handler's signal aborts and the job is retried", async () => {
  const q = queueName();
  await client.queuePut(q, { backoff: { initial_ms: 60_000 } });
  const [{ id }] = await client.enqueue(q, [{ payload: 1 }]);
  let reason;
  const worker = new Worker(client, { jobTimeoutMs: 200, leaseWaitMs: 100, ...quiet });
  worker.handle(q, (_job, ctx) => new Promise((resolve) => ctx.signal.addEventListener("abort", () => {
    reason = ctx.signal.reason;
    resolve();
  })));
  worker.start();
  await eventually(async () => (await client.jobGet(id)).state === "scheduled", 10_000, "the nack");
  await worker.stop();
  assert.equal(reason.name, "DeadlineExceeded");
  assert.match((await client.jobGet(id)).errors[0].error, /deadline of 200 ms/);
});

test("heartbeats keep a lease past its visibility timeout; a refused one aborts the handler", async () => {
  const q = queueName();
  const [{ id: slow }, { id: stolen }] = await client.enqueue(q, [{ payload: "slow" }, { payload: "stolen" }]);
  let abortedWith;
  const worker = new Worker(client, { visibilityTimeoutMs: 1_200, heartbeatIntervalMs: 200, leaseWaitMs: 100, concurrency: 2, ...quiet });
  const tokens = new Map();
  let slowRuns = 0;
  worker.handle(q, async (job, ctx) => {
    tokens.set(job.payload, job.lease_token);
    if (job.payload === "slow") slowRuns++;
    if (job.payload === "slow") return new Promise((r) => setTimeout(r, 3_000));
    return new Promise((resolve) => ctx.signal.addEventListener("abort", () => {
      abortedWith = ctx.signal.reason;
      resolve();
    }));
  });
  worker.start();
  await eventually(() => tokens.size === 2, 10_000, "both running");
  // Someone else settles the lease of "stolen": the next heartbeat is refused.
  await client.fail(stolen, tokens.get("stolen"), "taken away");
  await eventually(() => abortedWith !== undefined, 5_000, "the abort");
  assert.equal(abortedWith.code, "lease_lost");
  await eventually(async () => (await client.queueGet(q)).stats.leased === 0, 10_000, "the slow job acked");
  await worker.stop();
  // The slow job ran 3 s on leases of 1.2 s: heartbeats kept it, so it was acked on attempt 1.
  await assert.rejects(client.jobGet(slow), (e) => e.code === "not_found");
  assert.equal(slowRuns, 1);
  assert.equal((await client.jobGet(stolen)).errors.length, 1);
});

test("a cancelled job aborts its handler and ends cancelled at once, not at its lease's expiry", async () => {
  const q = queueName();
  const [{ id }] = await client.enqueue(q, [{ payload: "stop me" }]);
  let abortedWith;
  let started = false;
  const worker = new Worker(client, { visibilityTimeoutMs: 30_000, heartbeatIntervalMs: 100, leaseWaitMs: 100, ...quiet });
  worker.handle(q, async (job, ctx) => {
    started = true;
    await new Promise((resolve) => ctx.signal.addEventListener("abort", resolve));
    abortedWith = ctx.signal.reason;
    throw abortedWith;
  });
  worker.start();
  await eventually(() => started, 10_000, "the handler running");
  assert.equal((await client.cancel(id)).state, "leased");
  await eventually(() => abortedWith !== undefined, 5_000, "the abort");
  assert.equal(abortedWith.code, "job_cancelled");
  // Well before the 30 s lease would expire: the worker gave the lease back.
  await eventually(async () => (await client.jobGet(id)).state === "cancelled", 5_000, "the job cancelled");
  await worker.stop();
  assert.equal((await client.jobGet(id)).errors.length, 0, "a release records no error");
});

test("stop releases leased jobs that did not start, and waits for running ones", async () => {
  const q = queueName();
  await client.enqueue(q, Array.from({ length: 6 }, (_, i) => ({ payload: i })));
  let started = 0;
  let finish;
  const worker = new Worker(client, { concurrency: 1, prefetch: 5, leaseBatchMax: 6, leaseWaitMs: 100, ...quiet });
  worker.handle(q, () => {
    started++;
    return new Promise((r) => (finish = r));
  });
  worker.start();
  await eventually(() => started === 1 && worker.heldCount === 6, 10_000, "one running, five waiting");
  const stopping = worker.stop();
  await eventually(async () => (await client.queueGet(q)).stats.ready === 5, 10_000, "five released");
  finish();
  await stopping;
  await worker.stop(); // a second stop is the same stop
  const stats = (await client.queueGet(q)).stats;
  assert.deepEqual([stats.ready, stats.leased], [5, 0]);
  const jobs = await client.lease(q, { max_jobs: 10 });
  assert.ok(jobs.every((job) => job.attempt === 1), "a release spends no attempt");
  assert.equal(started, 1);
});

test("SIGTERM stops a worker process gracefully", async () => {
  const q = queueName();
  await client.enqueue(q, Array.from({ length: 4 }, (_, i) => ({ payload: i })));
  const script = fileURLToPath(new URL("./sigterm-worker.mjs", import.meta.url));
  const child = spawn(process.execPath, [script, server.url, q], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout.on("data", (chunk) => (out += chunk));
  await eventually(() => out.includes("started"), 10_000, "the handler to start");
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  const signalled = Date.now();
  child.kill("SIGTERM");
  const { code } = await exited;
  assert.equal(code, 0, out);
  // It exits once its handler is done, not after the whole grace period.
  assert.ok(Date.now() - signalled < 5_000, `exited ${Date.now() - signalled} ms after SIGTERM`);
  assert.match(out, /finished/);
  const stats = (await client.queueGet(q)).stats;
  // One job ran to its ack; the three leased but not started were released.
  assert.deepEqual([stats.ready, stats.leased], [3, 0]);
});
