// Filtered and paced redrives against a real `onceq serve`: a dry run counts what the filters
// match and moves nothing, a redrive goes on from `last` and into another queue, and a paced
// redrive is started, listed, stepped to its end or stopped; an unknown one is NotFound.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, InvalidRequest, NotFound } from "../dist/index.js";
import { queueName, startServer } from "./server.mjs";

let server;
let client;
before(async () => {
  server = await startServer();
  client = new Client(server.url);
});
after(() => server.close());

/** Enqueues one job per error and fails each with it: their ids, dead, in order. */
async function dead(queue, errors) {
  const ids = (await client.enqueue(queue, errors.map((_, i) => ({ payload: i })))).map((e) => e.id);
  const jobs = await client.lease(queue, { max_jobs: errors.length });
  assert.deepEqual(jobs.map((j) => j.id), ids);
  const results = await client.fails(jobs.map((j, i) => ({ id: j.id, lease_token: j.lease_token, error: errors[i] })));
  assert.ok(results.every((r) => r.ok));
  return ids;
}

test("filters with a dry run, in steps from last, and into another queue", async () => {
  const q = queueName("redrive");
  const ids = await dead(q, ["timeout: smtp", "bad body", "timeout: dns", "timeout: smtp"]);
  const timeouts = [ids[0], ids[2], ids[3]];
  assert.deepEqual(await client.deadRedrive(q, { error_contains: "timeout", dry_run: true }), { matched: 3, redriven: 0, last: null });
  assert.deepEqual((await client.deadList(q)).jobs.map((j) => j.id), ids);
  const hourAgo = new Date(Date.now() - 3_600_000).toISOString();
  const inAnHour = new Date(Date.now() + 3_600_000).toISOString();
  assert.equal((await client.deadRedrive(q, { dead_after: hourAgo, min_attempts: 1, dry_run: true })).matched, 4);
  assert.equal((await client.deadRedrive(q, { dead_after: inAnHour, dry_run: true })).matched, 0);
  assert.equal((await client.deadRedrive(q, { min_attempts: 2, dry_run: true })).matched, 0);

  const first = await client.deadRedrive(q, { error_contains: "timeout", limit: 2 });
  assert.deepEqual(first, { matched: 3, redriven: 2, last: timeouts[1] });
  const rest = await client.deadRedrive(q, { error_contains: "timeout", after: first.last });
  assert.deepEqual(rest, { matched: 1, redriven: 1, last: timeouts[2] });
  assert.deepEqual((await client.lease(q, { max_jobs: 10 })).map((j) => j.id), timeouts);

  const other = `${q}-fixed`;
  await client.queuePut(other);
  assert.deepEqual(await client.deadRedrive(q, { to_queue: other }), { matched: 1, redriven: 1, last: ids[1] });
  const [job] = await client.lease(other, { max_jobs: 10 });
  assert.deepEqual([job.id, job.queue, job.attempt, job.payload], [ids[1], other, 1, 1]);
  assert.deepEqual((await client.deadList(q)).jobs, []);

  await assert.rejects(client.deadRedrive(q, { dead_after: inAnHour, dead_before: hourAgo }),
    (e) => e instanceof InvalidRequest && e.status === 400 && /dead_/.test(e.message));
  await assert.rejects(client.deadRedrive(q, { to_queue: `${q}-missing` }), NotFound);
  await assert.rejects(client.deadRedrive(q, { ids: Array.from({ length: 1001 }, (_, i) => String(i + 1)) }),
    (e) => e instanceof RangeError && /at most 1000 ids/.test(e.message));
});

test("a paced redrive is started, listed, stopped; another ticks to its end", async () => {
  const q = queueName("paced");
  const ids = await dead(q, ["down", "down", "down"]);
  const slow = await client.redriveStart(q, 1, { error_contains: "down" });
  assert.deepEqual([slow.queue, slow.rate_per_second, slow.state, slow.matched, slow.finished_at, slow.error], [q, 1, "running", 3, null, null]);
  assert.equal(slow.filter.error_contains, "down");
  // Capped at its start (an exclusive bound, so the start's own millisecond is in).
  assert.ok(Date.parse(slow.filter.dead_before) <= Date.parse(slow.created_at) + 1);
  assert.equal((await client.redriveGet(slow.id)).id, slow.id);
  const listed = (await client.redriveList()).find((p) => p.id === slow.id);
  assert.equal(listed.state, "running");
  assert.deepEqual(listed.filter, slow.filter);
  const stopped = await client.redriveStop(slow.id);
  assert.equal(stopped.state, "stopped");
  assert.notEqual(stopped.finished_at, null);
  assert.ok(stopped.redriven <= 1);
  assert.deepEqual(await client.redriveStop(slow.id), stopped);
  const left = (await client.deadList(q)).jobs.length;
  assert.equal(left, 3 - stopped.redriven);

  // At 10,000 a second, one step moves all that is left: the store's own (every 100 ms) or a tick.
  const fast = await client.redriveStart(q, 10_000);
  assert.deepEqual([fast.state, fast.matched], ["running", left]);
  const deadline = Date.now() + 3000;
  let now = fast;
  while (now.state === "running" && Date.now() < deadline) {
    assert.ok((await client.redriveTicks()) >= 0);
    await new Promise((r) => setTimeout(r, 20));
    now = await client.redriveGet(fast.id);
  }
  assert.deepEqual([now.state, now.redriven, now.cursor, now.error], ["done", left, ids[2], null]);
  assert.notEqual(now.finished_at, null);
  assert.deepEqual((await client.deadList(q)).jobs, []);
  assert.deepEqual((await client.lease(q, { max_jobs: 10 })).map((j) => j.id).sort(), [...ids].sort());

  await assert.rejects(client.redriveGet("999999999"), (e) => e instanceof NotFound && e.status === 404 && e.code === "not_found");
  await assert.rejects(client.redriveStop("999999999"), NotFound);
  await assert.rejects(client.redriveGet("first"), (e) => e instanceof InvalidRequest && e.status === 400);
  await assert.rejects(client.redriveStart(q, 10_001), RangeError);
});
