// The client against a real `onceq serve`: every endpoint group answers with its typed reply,
// and every error arrives as the class of its API code.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  Client, Conflict, Fenced, InvalidRequest, JobCancelled, LeaseLost, NotFound, OnceqError, RateLimited, Unavailable,
} from "../dist/index.js";
import { queueName, startServer } from "./server.mjs";

let server;
let client;
before(async () => {
  server = await startServer();
  client = new Client(server.url);
});
after(() => server.close());

test("enqueue dedups by dedup_id and Idempotency-Key, and reads the job back", async () => {
  const q = queueName();
  const first = await client.enqueue(q, [{ payload: { to: "ada" }, dedup_id: "d1", headers: { trace: "t" } }]);
  assert.equal(first.length, 1);
  assert.equal(first[0].duplicate, false);
  const again = await client.enqueue(q, [{ payload: { to: "ada" }, dedup_id: "d1" }]);
  assert.deepEqual(again, [{ id: first[0].id, duplicate: true }]);
  const keyed = await client.enqueue(q, [{ payload: 1 }], { idempotencyKey: "k-1" });
  const keyedAgain = await client.enqueue(q, [{ payload: 1 }], { idempotencyKey: "k-1" });
  assert.deepEqual(keyedAgain, [{ id: keyed[0].id, duplicate: true }]);
  const job = await client.jobGet(first[0].id);
  assert.equal(job.queue, q);
  assert.equal(job.state, "ready");
  assert.deepEqual(job.payload, { to: "ada" });
  assert.deepEqual(job.headers, { trace: "t" });
  assert.equal(job.dedup_id, "d1");
  const bytes = await client.enqueue(q, [{ payload_base64: "/wAQ" }]);
  const raw = await client.jobGet(bytes[0].id);
  assert.equal(raw.payload, null);
  assert.equal(raw.payload_base64, "/wAQ");
});

test("unique jobs: a duplicate while the first is pending, a new job once it is leased", async () => {
  const q = queueName();
  const unique = { by: "payload", while: "pending" };
  const [first] = await client.enqueue(q, [{ payload: { day: "2026-12-07", kind: "sales" }, unique }]);
  assert.equal(first.duplicate, false);
  const again = await client.enqueue(q, [{ payload: { kind: "sales", day: "2026-12-07" }, unique }]);
  assert.deepEqual(again, [{ id: first.id, duplicate: true }]);
  const [leased] = await client.lease(q, { max_jobs: 1 });
  assert.equal(leased.id, first.id);
  const [next] = await client.enqueue(q, [{ payload: { day: "2026-12-07", kind: "sales" }, unique }]);
  assert.equal(next.duplicate, false);
  await assert.rejects(client.enqueue(q, [{ payload: 1, unique: { by: "payload", while: "running" } }]), /unique\.while/);
});

test("lease and ack; a stale token is LeaseLost, an acked job NotFound", async () => {
  const q = queueName();
  await client.enqueue(q, [{ payload: "a" }, { payload: "b" }]);
  const jobs = await client.lease(q, { max_jobs: 10, visibility_timeout_ms: 5000 });
  assert.deepEqual(jobs.map((j) => j.payload), ["a", "b"]);
  assert.equal(jobs[0].attempt, 1);
  assert.match(jobs[0].lease_token, /^[0-9a-f]{32}$/);
  await client.ack(jobs[0].id, jobs[0].lease_token);
  await assert.rejects(client.ack(jobs[0].id, jobs[0].lease_token), (e) => e instanceof NotFound && e.code === "not_found" && e.status === 404);
  await assert.rejects(client.ack(jobs[1].id, "0".repeat(32)), (e) => e instanceof LeaseLost && e.status === 409 && /lease lost/.test(e.message));
  const expires = await client.extend(jobs[1].id, jobs[1].lease_token, 60_000);
  assert.ok(Date.parse(expires) > Date.now() + 50_000);
  await client.release(jobs[1].id, jobs[1].lease_token);
  assert.equal((await client.jobGet(jobs[1].id)).attempt, 0);
});

test("cancel ends a waiting job and marks a leased one", async () => {
  const q = queueName();
  const [waiting] = await client.enqueue(q, [{ payload: 1, delay_ms: 60_000 }]);
  const cancelled = await client.cancel(waiting.id);
  assert.equal(cancelled.state, "cancelled");
  assert.ok(cancelled.cancelled_at);
  await client.enqueue(q, [{ payload: 2 }]);
  const [job] = await client.lease(q, { visibility_timeout_ms: 30_000 });
  const marked = await client.cancel(job.id);
  assert.deepEqual([marked.state, Boolean(marked.cancelled_at)], ["leased", true]);
  await assert.rejects(client.extend(job.id, job.lease_token, 30_000), (e) => e instanceof JobCancelled && e.status === 409);
  await client.release(job.id, job.lease_token);
  assert.equal((await client.jobGet(job.id)).state, "cancelled");
  assert.equal((await client.queueGet(q)).stats.cancelled, 2);
});

test("kill makes a waiting job dead, delete removes it, a leased job is refused both", async () => {
  const q = queueName();
  const [waiting] = await client.enqueue(q, [{ payload: 1, delay_ms: 60_000 }]);
  const killed = await client.kill(waiting.id, "bad data");
  assert.deepEqual([killed.state, killed.errors.at(-1).error], ["dead", "bad data"]);
  assert.equal((await client.kill(waiting.id)).errors.length, 1, "a dead job stays as it is");
  await client.delete(waiting.id);
  await assert.rejects(client.jobGet(waiting.id), NotFound);
  await assert.rejects(client.delete(waiting.id), NotFound);
  await client.enqueue(q, [{ payload: 2 }]);
  const [job] = await client.lease(q, { visibility_timeout_ms: 30_000 });
  await assert.rejects(client.kill(job.id), (e) => e instanceof Conflict && e.status === 409);
  await assert.rejects(client.delete(job.id), (e) => e instanceof Conflict && e.status === 409);
  await client.ack(job.id, job.lease_token);
});

test("nack to dead, list the dead, redrive, purge", async () => {
  const q = queueName();
  await client.queuePut(q, { max_attempts: 1 });
  const [{ id }] = await client.enqueue(q, [{ payload: "poison" }]);
  const [job] = await client.lease(q);
  await client.nack(job.id, job.lease_token, { error: "boom" });
  const dead = await client.deadList(q);
  assert.equal(dead.next, null);
  assert.deepEqual(dead.jobs.map((j) => [j.id, j.state, j.errors[0].error]), [[id, "dead", "boom"]]);
  assert.deepEqual(await client.deadRedrive(q, { ids: [id] }), { matched: 1, redriven: 1, last: id });
  assert.equal((await client.jobGet(id)).state, "ready");
  const [again] = await client.lease(q);
  await client.fail(again.id, again.lease_token, "bad");
  assert.equal(await client.deadPurge(q), 1);
  await assert.rejects(client.jobGet(id), NotFound);
});

test("batch settles judge each item on its own", async () => {
  const q = queueName();
  await client.enqueue(q, [{ payload: 1 }, { payload: 2 }, { payload: 3 }]);
  const jobs = await client.lease(q, { max_jobs: 3 });
  const acks = await client.acks([
    { id: jobs[0].id, lease_token: jobs[0].lease_token },
    { id: jobs[1].id, lease_token: "f".repeat(32) },
  ]);
  assert.deepEqual(acks.map((r) => [r.id, r.ok, r.error?.code]), [[jobs[0].id, true, undefined], [jobs[1].id, false, "lease_lost"]]);
  const nacks = await client.nacks([{ id: jobs[1].id, lease_token: jobs[1].lease_token, delay_ms: 60_000 }]);
  assert.equal(nacks[0].outcome, "retrying");
  assert.ok(Date.parse(nacks[0].run_at) > Date.now() + 50_000);
  const extended = await client.extends([{ id: jobs[2].id, lease_token: jobs[2].lease_token, visibility_timeout_ms: 60_000 }]);
  assert.equal(extended[0].ok, true);
  assert.ok(extended[0].lease_expires_at);
  const released = await client.releases([{ id: jobs[2].id, lease_token: jobs[2].lease_token }]);
  assert.deepEqual(released, [{ id: jobs[2].id, ok: true }]);
  await assert.rejects(client.acks([{ id: "x", lease_token: "y" }]), (e) => e instanceof InvalidRequest && e.status === 400);
});

test("queues: put, get, list pages, pause, resume, delete", async () => {
  const q = queueName("cfg");
  const config = await client.queuePut(q, { max_attempts: 7, backoff: { initial_ms: 500 }, max_depth: 10 });
  assert.equal(config.max_attempts, 7);
  assert.equal(config.backoff.initial_ms, 500);
  assert.equal(config.max_depth, 10);
  assert.equal(config.durability, undefined);
  assert.equal((await client.queuePut(q, { durability: "relaxed" })).durability, "relaxed");
  assert.equal((await client.queueGet(q)).config.durability, "relaxed");
  assert.equal((await client.queuePut(q, { durability: null })).durability, undefined);
  await client.queuePause(q);
  const got = await client.queueGet(q);
  assert.equal(got.paused, true);
  assert.equal(got.stats.ready, 0);
  await client.queueResume(q);
  const all = await client.queueList();
  assert.ok(all.some((queue) => queue.name === q));
  const page = await client.queueListPage({ limit: 1 });
  assert.equal(page.queues.length, 1);
  await client.queueDelete(q);
  await assert.rejects(client.queueGet(q), NotFound);
  await assert.rejects(client.queuePut(q, { max_attempts: 0 }), InvalidRequest);
});

test("a full queue is RateLimited with its retry-after, after the configured tries", async () => {
  const q = queueName();
  await client.queuePut(q, { max_depth: 1 });
  await client.enqueue(q, [{ payload: 1 }]);
  const once = new Client({ url: server.url, rateLimitedTries: 1 });
  await assert.rejects(once.enqueue(q, [{ payload: 2 }]), (e) => e instanceof RateLimited && e.retryAfterMs === 1000 && e.status === 429);
});

test("the idempotency store: acquired, in progress, completed, conflict", async () => {
  const key = queueName("key");
  assert.deepEqual(await client.idempotencyBegin(key, { owner: "a", ttl_ms: 30_000, fingerprint: "f1" }), { state: "acquired" });
  const other = await client.idempotencyBegin(key, { owner: "b", ttl_ms: 30_000 });
  assert.equal(other.state, "in_progress");
  assert.equal(other.owner, "a");
  await assert.rejects(client.idempotencyBegin(key, { owner: "b", ttl_ms: 30_000, fingerprint: "f2" }), Conflict);
  await assert.rejects(client.idempotencyComplete(key, { owner: "b", result: 1, retention_ms: 60_000 }), Conflict);
  await client.idempotencyComplete(key, { owner: "a", result: { charge: "ch_1" }, retention_ms: 60_000 });
  assert.deepEqual(await client.idempotencyBegin(key, { owner: "c", ttl_ms: 30_000 }), { state: "completed", result: { charge: "ch_1" } });
  const released = queueName("key");
  await client.idempotencyBegin(released, { owner: "a", ttl_ms: 30_000 });
  await client.idempotencyRelease(released, "a");
  assert.deepEqual(await client.idempotencyBegin(released, { owner: "b", ttl_ms: 30_000 }), { state: "acquired" });
});

test("commits and producers: all or nothing, and a fenced epoch", async () => {
  const q = queueName();
  const p = queueName("prod");
  const first = await client.producerRegister(p);
  assert.equal(first.epoch, 1);
  const result = await client.commit({ producer: { id: p, epoch: 1 }, enqueue: [{ queue: q, jobs: [{ payload: 1 }] }], checkpoint: { offset: 1 } });
  assert.equal(result.replayed, false);
  assert.equal(result.enqueued[0].jobs.length, 1);
  const second = await client.producerRegister(p);
  assert.deepEqual([second.epoch, second.checkpoint], [2, { offset: 1 }]);
  await assert.rejects(client.commit({ producer: { id: p, epoch: 1 }, enqueue: [{ queue: q, jobs: [{ payload: 2 }] }] }), Fenced);
  assert.equal((await client.producerGet(p)).epoch, 2);
  const [job] = await client.lease(q);
  await assert.rejects(
    client.commit({ ack: [{ id: job.id, lease_token: "0".repeat(32) }], enqueue: [{ queue: q, jobs: [{ payload: 3 }] }] }),
    (e) => e instanceof LeaseLost && e.jobs.includes(job.id),
  );
  assert.equal((await client.queueGet(q)).stats.ready, 0);
});

test("schedules and consumer groups answer their views", async () => {
  const q = queueName();
  const name = queueName("sched");
  const schedule = await client.schedulePut(name, { queue: q, cron: "0 6 * * 1-5", timezone: "Europe/Berlin", payload: { kind: "daily" } });
  assert.equal(schedule.name, name);
  assert.equal(schedule.next_ticks.length, 5);
  await client.schedulePause(name);
  assert.equal((await client.scheduleGet(name)).paused, true);
  await client.scheduleResume(name);
  assert.ok((await client.scheduleList()).some((s) => s.name === name));
  assert.ok(Array.isArray((await client.scheduleTicks()).fired));
  await client.scheduleDelete(name);
  await assert.rejects(client.scheduleGet(name), NotFound);
  await assert.rejects(client.schedulePut(name, { queue: q, cron: "nope" }), (e) => e instanceof InvalidRequest && e.message.startsWith("cron: "));

  const ordered = queueName();
  await client.queuePut(ordered, { ordering: "per_key", partitions: 4 });
  const member = await client.groupJoin(ordered, "billing", { name: "w1" });
  assert.deepEqual(member.partitions, [0, 1, 2, 3]);
  assert.equal((await client.groupHeartbeat(ordered, "billing", member.member_id)).member_id, member.member_id);
  assert.equal((await client.groupGet(ordered, "billing")).members.length, 1);
  assert.equal((await client.groupList(ordered)).length, 1);
  await client.groupLeave(ordered, "billing", member.member_id);
  await assert.rejects(client.groupHeartbeat(ordered, "billing", member.member_id), (e) => e.code === "not_member");
});

test("operations, and an AbortSignal ends a long poll", async () => {
  assert.equal(await client.healthz(), true);
  assert.equal(await client.readyz(), true);
  assert.match(await client.metrics(), /onceq_jobs_enqueued_total/);
  assert.equal((await client.openapi()).openapi.startsWith("3.1"), true);
  const controller = new AbortController();
  const started = Date.now();
  setTimeout(() => controller.abort(new Error("stop waiting")), 100);
  await assert.rejects(client.lease(queueName(), { wait_ms: 10_000 }, { signal: controller.signal }), /stop waiting/);
  assert.ok(Date.now() - started < 5_000);
});

test("an unreachable server is Unavailable with code connection_failed", async () => {
  const dead = new Client({ url: "http://127.0.0.1:1", requestTimeoutMs: 2_000 });
  await assert.rejects(dead.queueGet("x"), (e) => e instanceof Unavailable && e instanceof OnceqError && e.code === "connection_failed" && e.status === 0);
  assert.throws(() => new Client("not a url"), /is not a URL/);
});
