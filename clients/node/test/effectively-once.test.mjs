// effectivelyOnce against a real `onceq serve`: acquired → the handler runs and its result is
// recorded before the ack; completed → the recorded result, no run, ack; held elsewhere → the job
// is released (no attempt spent) until the claim ends; a throw releases the key for the retry.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Client, effectivelyOnce, idempotencyKey, Worker } from "../dist/index.js";
import { eventually, queueName, startServer } from "./server.mjs";

let server;
let client;
before(async () => {
  server = await startServer();
  client = new Client(server.url);
  await client.queuePut("eo", { delivery: "effectively_once", backoff: { initial_ms: 60_000 } });
});
after(() => server.close());

const quiet = { onError: () => {}, leaseWaitMs: 100 };
const gone = async (id) => client.jobGet(id).then(() => false, (e) => e.code === "not_found");

test("keys are derived as the Rust worker derives them", () => {
  assert.equal(idempotencyKey("onceq:", "payments", "7", "order-42"), "onceq:payments:order-42");
  assert.equal(idempotencyKey("onceq:", "payments", "7", null), "onceq:payments:#7");
  const long = "x".repeat(300);
  assert.equal(idempotencyKey("onceq:", "q", "1", long), "onceq:q:~0d4e2ca9e9cbced7a7a5380eb29e1a3783b9b6d0db72de36a1051038e1c1fbc7");
});

test("acquired: the handler runs once, its result is recorded, the job acked", async () => {
  const dedup = queueName("d");
  const [{ id }] = await client.enqueue("eo", [{ payload: { amount: 5 }, dedup_id: dedup }]);
  let runs = 0;
  const worker = new Worker(client, quiet);
  worker.handle("eo", effectivelyOnce(async (job) => {
    runs++;
    return { charge: `ch_${job.id}` };
  }));
  worker.start();
  await eventually(() => gone(id), 10_000, "the ack");
  await worker.stop();
  assert.equal(runs, 1);
  const record = await client.idempotencyBegin(`onceq:eo:${dedup}`, { owner: "probe", ttl_ms: 1000 });
  assert.deepEqual(record, { state: "completed", result: { charge: `ch_${id}` } });
});

test("completed: no run, the recorded result, ack", async () => {
  const dedup = queueName("d");
  const key = `onceq:eo:${dedup}`;
  await client.idempotencyBegin(key, { owner: "earlier", ttl_ms: 60_000 });
  await client.idempotencyComplete(key, { owner: "earlier", result: { charge: "ch_first" }, retention_ms: 60_000 });
  const [{ id }] = await client.enqueue("eo", [{ payload: {}, dedup_id: dedup }]);
  let runs = 0;
  const duplicates = [];
  const worker = new Worker(client, quiet);
  worker.handle("eo", effectivelyOnce(() => void runs++, { onDuplicate: (job, result) => duplicates.push([job.id, result]) }));
  worker.start();
  await eventually(() => gone(id), 10_000, "the ack");
  await worker.stop();
  assert.equal(runs, 0);
  assert.deepEqual(duplicates, [[id, { charge: "ch_first" }]]);
});

test("held elsewhere: the job is released until the claim ends, without spending an attempt", async () => {
  const dedup = queueName("d");
  await client.idempotencyBegin(`onceq:eo:${dedup}`, { owner: "someone-else", ttl_ms: 60_000 });
  const [{ id }] = await client.enqueue("eo", [{ payload: {}, dedup_id: dedup }]);
  let runs = 0;
  const worker = new Worker(client, quiet);
  worker.handle("eo", effectivelyOnce(() => void runs++));
  worker.start();
  await eventually(async () => (await client.jobGet(id)).state === "scheduled", 10_000, "the release");
  await worker.stop();
  const job = await client.jobGet(id);
  assert.equal(runs, 0);
  assert.equal(job.attempt, 0);
  assert.deepEqual(job.errors, []);
  const wait = Date.parse(job.run_at) - Date.now();
  assert.ok(wait > 50_000 && wait <= 60_000, `released for ${wait} ms`);
});

test("a throw releases the key and nacks, so the retry runs the effect", async () => {
  const dedup = queueName("d");
  const [{ id }] = await client.enqueue("eo", [{ payload: {}, dedup_id: dedup }]);
  const worker = new Worker(client, quiet);
  worker.handle("eo", effectivelyOnce(() => {
    throw new Error("card declined");
  }));
  worker.start();
  await eventually(async () => (await client.jobGet(id)).state === "scheduled", 10_000, "the nack");
  await worker.stop();
  assert.equal((await client.jobGet(id)).errors[0].error, "Error: card declined");
  assert.deepEqual(await client.idempotencyBegin(`onceq:eo:${dedup}`, { owner: "probe", ttl_ms: 1000 }), { state: "acquired" });
});
